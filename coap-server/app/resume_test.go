package app_test

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// seqOf reads a frame and returns its seq and uplink_count.
func seqOf(t *testing.T, ws *websocket.Conn) (seq uint64, count int, f map[string]any) {
	t.Helper()
	f = readFrame(t, ws)
	s, _ := f["seq"].(float64)
	if d, ok := f["data"].(map[string]any); ok {
		if c, ok := d["uplink_count"].(float64); ok {
			count = int(c)
		}
	}
	return uint64(s), count, f
}

func TestWSSinceAndTail(t *testing.T) {
	dir := t.TempDir()
	a := startApp(t, func(c *app.Config) { c.Stream.DataDir = dir; c.Stream.LivePerDevice = 6 })
	cc := dialCoAP(t, a)
	all := dialWS(t, a, "")
	seqs := map[string][]uint64{}
	for i := range 5 {
		for _, d := range []string{"RA", "RB"} {
			if code := post(t, cc, &nbiotv1.Uplink{DeviceId: d, UplinkCount: uint32(i)}); code != codes.Changed {
				t.Fatal(code)
			}
			s, _, _ := seqOf(t, all)
			seqs[d] = append(seqs[d], s)
		}
	}

	t.Run("tail", func(t *testing.T) {
		ws := dialWS(t, a, "?deviceId=RA&tail=3")
		for i, want := range seqs["RA"][2:] {
			if s, c, _ := seqOf(t, ws); s != want || c != 2+i {
				t.Fatalf("tail entry %d: seq %d count %d, want seq %d count %d", i, s, c, want, 2+i)
			}
		}
		// Then live, with nothing repeated.
		if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "RA", UplinkCount: 5}); code != codes.Changed {
			t.Fatal(code)
		}
		s, c, _ := seqOf(t, ws)
		if c != 5 || s <= seqs["RA"][4] {
			t.Fatalf("live after tail: seq %d count %d", s, c)
		}
		seqs["RA"] = append(seqs["RA"], s)
		_, _, _ = seqOf(t, all)
	})

	t.Run("since", func(t *testing.T) {
		ws := dialWS(t, a, "?deviceId=RA&deviceId=RB&since="+strconv.FormatUint(seqs["RB"][2], 10))
		want := []uint64{seqs["RA"][3], seqs["RB"][3], seqs["RA"][4], seqs["RB"][4], seqs["RA"][5]}
		for i, w := range want {
			if s, _, f := seqOf(t, ws); s != w {
				t.Fatalf("entry %d after since: seq %d (%v), want %d", i, s, f, w)
			}
		}
	})

	t.Run("since beyond the newest position", func(t *testing.T) {
		ws := dialWS(t, a, "?deviceId=RB&since=999999")
		_, _, f := seqOf(t, ws)
		if f["type"] != "status" || f["data"].(map[string]any)["recovered"] != false {
			t.Fatalf("first frame %v, want status recovered:false", f)
		}
		if _, has := f["seq"]; has {
			t.Errorf("the status entry has a seq: %v", f)
		}
		if s, _, _ := seqOf(t, ws); s != seqs["RB"][0] {
			t.Fatalf("then %d, want what is retained from %d", s, seqs["RB"][0])
		}
	})

	t.Run("since older than retained", func(t *testing.T) {
		for i := 6; i < 9; i++ { // RA now has 9 entries; 6 are retained
			if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "RA", UplinkCount: uint32(i)}); code != codes.Changed {
				t.Fatal(code)
			}
			s, _, _ := seqOf(t, all)
			seqs["RA"] = append(seqs["RA"], s)
		}
		ws := dialWS(t, a, "?deviceId=RA&since="+strconv.FormatUint(seqs["RA"][0], 10))
		if _, _, f := seqOf(t, ws); f["type"] != "status" || f["data"].(map[string]any)["recovered"] != false {
			t.Fatalf("first frame %v, want status recovered:false", f)
		}
		if s, _, _ := seqOf(t, ws); s != seqs["RA"][3] {
			t.Fatalf("then seq %d, want the oldest retained %d", s, seqs["RA"][3])
		}
	})

	t.Run("across a restart", func(t *testing.T) {
		last := seqs["RA"][len(seqs["RA"])-1]
		ctxShutdown(t, a)
		b := startApp(t, func(c *app.Config) { c.Stream.DataDir = dir; c.Stream.LivePerDevice = 6 })
		ws := dialWS(t, b, "?deviceId=RA&since="+strconv.FormatUint(seqs["RA"][6], 10))
		if code := post(t, dialCoAP(t, b), &nbiotv1.Uplink{DeviceId: "RA", UplinkCount: 9}); code != codes.Changed {
			t.Fatal(code)
		}
		for i, w := range []int{7, 8, 9} {
			s, c, _ := seqOf(t, ws)
			if c != w || (i < 2 && s != seqs["RA"][w]) || (i == 2 && s <= last) {
				t.Fatalf("after restart: entry %d is #%d at %d, want #%d", i, c, s, w)
			}
		}
	})
}

// Each bad since or tail is refused with 400 and a text that says what is
// allowed, before the upgrade (a WebSocket dial, so that the upgrade's own
// 400 cannot pass for it). A sign is no number here, as on the relay.
func TestWSSinceTailBadInput(t *testing.T) {
	a := startApp(t, nil)
	for q, want := range map[string]string{
		"?since=abc": "since must", "?since=-1": "since must", "?since=%2B5": "since must",
		"?since=99999999999999999999": "since must",
		"?tail=1001":                  "tail must", "?tail=-2": "tail must", "?tail=x": "tail must",
		"?tail=%2B5": "tail must", "?tail=-0": "tail must",
		"?since=1&tail=1": "not both",
	} {
		_, resp, err := websocket.DefaultDialer.Dial("ws://"+a.HTTPAddr().String()+"/ws"+q,
			http.Header{"Authorization": {"Bearer " + testToken}})
		if err == nil || resp == nil {
			t.Errorf("%s: upgraded (%v), want 400", q, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d %q, want 400 saying %q", q, resp.StatusCode, body, want)
		}
	}
}

// ctxShutdown stops a within 10 s (Shutdown is idempotent: the cleanup's
// second call returns at once).
func ctxShutdown(t *testing.T, a *app.App) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}
