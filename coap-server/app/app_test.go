package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

const testToken = "test-token-0123456789abcdef"

// startApp runs coap-server on loopback port 0 until the test ends.
func startApp(t testing.TB, mutate func(*app.Config)) *app.App {
	t.Helper()
	cfg, err := app.FromEnv(func(k string) string {
		return map[string]string{"COAP_ADDR": "127.0.0.1:0", "HTTP_ADDR": "127.0.0.1:0", "WS_TOKEN": testToken}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Stream.DataDir = t.TempDir()
	if mutate != nil {
		mutate(&cfg)
	}
	a := app.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return a
}

func dialCoAP(t testing.TB, a *app.App, opts ...udp.Option) *udpClient.Conn {
	t.Helper()
	cc, err := udp.Dial(a.CoAPAddr().String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func dialWS(t testing.TB, a *app.App, query string) *websocket.Conn {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + testToken}}
	ws, resp, err := websocket.DefaultDialer.Dial("ws://"+a.HTTPAddr().String()+"/ws"+query, h)
	if err != nil {
		t.Fatalf("dial /ws%s: %v (%v)", query, err, resp)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return ws
}

func post(t testing.TB, cc *udpClient.Conn, u *nbiotv1.Uplink) codes.Code {
	t.Helper()
	b, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	return postRaw(t, cc, "/uplink", b)
}

func postRaw(t testing.TB, cc *udpClient.Conn, path string, b []byte) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cc.Post(ctx, path, message.AppOctets, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	return resp.Code()
}

func readFrame(t testing.TB, ws *websocket.Conn) map[string]any {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("frame %q: %v", b, err)
	}
	return m
}

func TestUplinkBecomesLiveLogFrame(t *testing.T) {
	a := startApp(t, nil)
	ws := dialWS(t, a, "?deviceId=ABC123")
	cc := dialCoAP(t, a)
	temp := float32(23.5)
	up := &nbiotv1.Uplink{
		DeviceId: "ABC123", UplinkCount: 42, Temperature: &temp,
		Activity: &nbiotv1.Activity{Sleep: 3600, Modem: 45, Gnss: 120, Wifi: 30, Other: 60},
		WifiAps: []*nbiotv1.WifiAp{
			{Bssid: []byte{1, 2, 3, 4, 5, 6}, Rssi: -60, Channel: 1},
			{Bssid: []byte{1, 2, 3, 4, 5, 7}, Rssi: -70, Channel: 6},
			{Bssid: []byte{1, 2, 3, 4, 5, 8}, Rssi: -80, Channel: 11},
		},
	}
	before := time.Now().UTC().Truncate(time.Millisecond)
	if code := post(t, cc, up); code != codes.Changed {
		t.Fatalf("code %v, want 2.04", code)
	}
	m := readFrame(t, ws)
	ts, err := time.Parse("2006-01-02T15:04:05.000Z", m["timestamp"].(string))
	if err != nil || ts.Before(before) || ts.After(time.Now()) {
		t.Errorf("timestamp %v: %v", m["timestamp"], err)
	}
	delete(m, "timestamp")
	// seq is the entry's live-log position: the first entry of a new stream.
	want := map[string]any{
		"seq": 1.0, "deviceId": "ABC123", "type": "uplink", "message": "Received uplink #42",
		"data": map[string]any{
			"uplink_count": 42.0, "temperature": 23.5,
			"activity":   map[string]any{"sleep": 3600.0, "modem": 45.0, "gnss": 120.0, "wifi": 30.0, "other": 60.0},
			"wifi_count": 3.0, "reboot": nil,
		},
	}
	if got, _ := json.Marshal(m); !bytes.Equal(got, mustJSON(want)) {
		t.Errorf("frame\n got %s\nwant %s", got, mustJSON(want))
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
