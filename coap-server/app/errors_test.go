package app_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/options"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// counter returns the value of a counter in reg, summed over series whose
// labels include want.
func counter(t testing.TB, reg prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				sum += g.GetValue()
			}
		}
	}
	return sum
}

func TestCoAPErrors(t *testing.T) {
	a := startApp(t, nil)
	ws := dialWS(t, a, "")
	cc := dialCoAP(t, a)
	// Without block-wise, the client sends an oversize payload in one datagram.
	single := dialCoAP(t, a, options.WithBlockwise(false, 0, 0))
	valid, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "DEV-1", UplinkCount: 1})
	badID, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "bad id!", UplinkCount: 1})
	noID, _ := proto.Marshal(&nbiotv1.Uplink{UplinkCount: 1})
	badBSSID, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "DEV-2", WifiAps: []*nbiotv1.WifiAp{{Bssid: []byte{1, 2, 3}}}})

	tests := []struct {
		name   string
		do     func(ctx context.Context) (codes.Code, error)
		want   codes.Code
		reason string // nbiot_uplinks_rejected_total label, "" = none
	}{
		{"undecodable payload", postCode(cc, "/uplink", message.AppOctets, []byte{0xff, 0xff, 0xff}), codes.BadRequest, "undecodable"},
		{"invalid device ID", postCode(cc, "/uplink", message.AppOctets, badID), codes.BadRequest, "device_id"},
		{"missing device ID", postCode(cc, "/uplink", message.AppOctets, noID), codes.BadRequest, "device_id"},
		{"invalid field, device known", postCode(cc, "/uplink", message.AppOctets, badBSSID), codes.BadRequest, "invalid"},
		{"payload over the limit", postCode(cc, "/uplink", message.AppOctets, bytes.Repeat([]byte{0x08}, 1025)), codes.RequestEntityTooLarge, "too_large"},
		{"payload over the limit, one datagram", postCode(single, "/uplink", message.AppOctets, bytes.Repeat([]byte{0x08}, 1200)), codes.RequestEntityTooLarge, "too_large"},
		{"wrong content format", postCode(cc, "/uplink", message.AppJSON, valid), codes.UnsupportedMediaType, "content_format"},
		{"other path", postCode(cc, "/other", message.AppOctets, valid), codes.NotFound, ""},
		{"other method", func(ctx context.Context) (codes.Code, error) {
			r, err := cc.Get(ctx, "/uplink")
			if err != nil {
				return 0, err
			}
			return r.Code(), nil
		}, codes.MethodNotAllowed, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, a.Metrics, "nbiot_uplinks_rejected_total", map[string]string{"reason": tc.reason})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := tc.do(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("code %v, want %v", got, tc.want)
			}
			if tc.reason != "" {
				if after := counter(t, a.Metrics, "nbiot_uplinks_rejected_total", map[string]string{"reason": tc.reason}); after != before+1 {
					t.Errorf("rejected{reason=%q} went from %v to %v, want +1", tc.reason, before, after)
				}
			}
		})
	}

	// The only frame so far is the error entry for DEV-2, whose device ID
	// was known; then the valid uplink's.
	m := readFrame(t, ws)
	if m["type"] != "error" || m["deviceId"] != "DEV-2" || !strings.Contains(m["message"].(string), "bssid") {
		t.Errorf("first frame %v, want the error entry of DEV-2", m)
	}
	if code := postRaw(t, cc, "/uplink", valid); code != codes.Changed {
		t.Fatalf("valid uplink: %v", code)
	}
	if m := readFrame(t, ws); m["type"] != "uplink" || m["deviceId"] != "DEV-1" {
		t.Errorf("second frame %v, want DEV-1's uplink", m)
	}
}

func postCode(cc *udpClient.Conn, path string, cf message.MediaType, b []byte) func(context.Context) (codes.Code, error) {
	return func(ctx context.Context) (codes.Code, error) {
		r, err := cc.Post(ctx, path, cf, bytes.NewReader(b))
		if err != nil {
			return 0, err
		}
		return r.Code(), nil
	}
}

func TestWebSocketAuth(t *testing.T) {
	a := startApp(t, nil)
	url := "ws://" + a.HTTPAddr().String() + "/ws"
	tests := []struct {
		name   string
		query  string
		header http.Header
		want   int
	}{
		{"no token", "", nil, http.StatusUnauthorized},
		{"wrong token", "", http.Header{"Authorization": {"Bearer wrong-token-0123456789"}}, http.StatusUnauthorized},
		{"token without Bearer", "", http.Header{"Authorization": {testToken}}, http.StatusUnauthorized},
		{"token in query is not accepted", "?access_token=" + testToken, nil, http.StatusUnauthorized},
		{"invalid device ID", "?deviceId=no%20spaces", http.Header{"Authorization": {"Bearer " + testToken}}, http.StatusBadRequest},
		{"device ID too long", "?deviceId=" + strings.Repeat("a", 65), http.Header{"Authorization": {"Bearer " + testToken}}, http.StatusBadRequest},
		{"valid", "?deviceId=A&deviceId=B", http.Header{"Authorization": {"bearer " + testToken}}, http.StatusSwitchingProtocols},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ws, resp, err := websocket.DefaultDialer.Dial(url+tc.query, tc.header)
			if ws != nil {
				ws.Close()
			}
			if resp == nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

// WS_TOKEN rotated without downtime: coap-server takes the new token with
// the old one as WS_TOKEN_PREVIOUS, so the relay, still on the old one,
// keeps its upstream until it has the new one; each use of the old one is
// counted, so the operator can tell when to unset it. Without it, the old
// token is refused. Before, rotating meant a gap: whichever side went
// first refused, or was refused by, the other.
func TestWSTokenRotation(t *testing.T) {
	const next = "next-token-0123456789abcdef"
	dial := func(a *app.App, token string) int {
		t.Helper()
		ws, resp, err := websocket.DefaultDialer.Dial("ws://"+a.HTTPAddr().String()+"/ws", http.Header{"Authorization": {"Bearer " + token}})
		if ws != nil {
			ws.Close()
		}
		if resp == nil {
			t.Fatalf("no response: %v", err)
		}
		return resp.StatusCode
	}
	a := startApp(t, func(c *app.Config) { c.WSToken, c.WSTokenPrevious = next, testToken })
	for i, tc := range []struct {
		token    string
		want     int
		previous float64 // nbiot_ws_previous_token_total after it
	}{
		{testToken, http.StatusSwitchingProtocols, 1},
		{next, http.StatusSwitchingProtocols, 1},
		{"wrong-token-0123456789", http.StatusUnauthorized, 1},
		{testToken, http.StatusSwitchingProtocols, 2},
	} {
		if got := dial(a, tc.token); got != tc.want {
			t.Errorf("%d: status %d, want %d", i, got, tc.want)
		}
		if got := counter(t, a.Metrics, "nbiot_ws_previous_token_total", nil); got != tc.previous {
			t.Errorf("%d: nbiot_ws_previous_token_total %v, want %v", i, got, tc.previous)
		}
	}
	done := startApp(t, func(c *app.Config) { c.WSToken = next }) // the rotation's last step
	if got := dial(done, testToken); got != http.StatusUnauthorized {
		t.Errorf("old token without WS_TOKEN_PREVIOUS: %d, want 401", got)
	}

	env := map[string]string{"WS_TOKEN": next}
	getenv := func(k string) string { return env[k] }
	for previous, want := range map[string]string{
		"x7q9":    "WS_TOKEN_PREVIOUS is too short",
		next:      "WS_TOKEN_PREVIOUS is WS_TOKEN",
		testToken: "",
	} {
		env["WS_TOKEN_PREVIOUS"] = previous
		c, err := app.FromEnv(getenv)
		switch {
		case want == "" && (err != nil || c.WSTokenPrevious != previous):
			t.Errorf("WS_TOKEN_PREVIOUS of another token: %v %q", err, c.WSTokenPrevious)
		case want != "" && (err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), previous)):
			t.Errorf("WS_TOKEN_PREVIOUS %s: %v, want %q without the value", previous, err, want)
		}
	}
}

// SUPABASE_SERVICE_KEY goes with every REST request: http:// to another
// machine is refused unless ALLOW_PLAINTEXT says the network encrypts it.
// (Found in an audit: it was taken without a word.)
func TestConfigRefusesPlaintextToAnotherMachine(t *testing.T) {
	env := map[string]string{"WS_TOKEN": "0123456789abcdef0123", "SUPABASE_URL": "http://proj.supabase.co", "SUPABASE_SERVICE_KEY": "sb_secret_0123456789"}
	getenv := func(k string) string { return env[k] }
	if _, err := app.FromEnv(getenv); err == nil || !strings.HasPrefix(err.Error(), "SUPABASE_URL:") || strings.Contains(err.Error(), "sb_secret") {
		t.Fatalf("http:// SUPABASE_URL: err = %v, want one naming SUPABASE_URL", err)
	}
	env["ALLOW_PLAINTEXT"] = "true"
	if _, err := app.FromEnv(getenv); err != nil {
		t.Fatalf("with ALLOW_PLAINTEXT=true: %v", err)
	}
	env["ALLOW_PLAINTEXT"], env["SUPABASE_URL"] = "", "http://127.0.0.1:54321"
	if _, err := app.FromEnv(getenv); err != nil {
		t.Fatalf("http:// to loopback: %v", err)
	}
}

func TestConfigRefusesToStartWithoutToken(t *testing.T) {
	_, err := app.FromEnv(func(string) string { return "" })
	if err == nil || !strings.HasPrefix(err.Error(), "WS_TOKEN") {
		t.Fatalf("err = %v, want one naming WS_TOKEN", err)
	}
}

// TestConfigSwitches: every true/false variable reads the same forms as
// the relay's AUTH_DISABLED (true/false/1/0, any case) and refuses others
// with an error naming it.
func TestConfigSwitches(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		got         func(app.Config) bool
		want        bool
	}{
		{"NATS_SYNC_ALWAYS", "TRUE", func(c app.Config) bool { return c.Stream.SyncAlways }, true},
		{"NATS_SYNC_ALWAYS", "1", func(c app.Config) bool { return c.Stream.SyncAlways }, true},
		{"NATS_SYNC_ALWAYS", "", func(c app.Config) bool { return c.Stream.SyncAlways }, false},
		{"COAPS_KEY_FILE", "False", func(c app.Config) bool { return c.CoAPSKeyFile }, false},
		{"COAPS_KEY_FILE", "0", func(c app.Config) bool { return c.CoAPSKeyFile }, false},
		{"COAPS_KEY_FILE", "", func(c app.Config) bool { return c.CoAPSKeyFile }, true},
	} {
		env := map[string]string{"WS_TOKEN": "0123456789abcdef0123", tc.name: tc.value}
		c, err := app.FromEnv(func(k string) string { return env[k] })
		if err != nil || tc.got(c) != tc.want {
			t.Errorf("%s=%q: %v, err %v; want %v", tc.name, tc.value, tc.got(c), err, tc.want)
		}
	}
	for _, name := range []string{"NATS_SYNC_ALWAYS", "COAPS_KEY_FILE", "AUTO_REGISTER", "ALLOW_PLAINTEXT"} {
		env := map[string]string{"WS_TOKEN": "0123456789abcdef0123", name: "yes"}
		if _, err := app.FromEnv(func(k string) string { return env[k] }); err == nil || !strings.HasPrefix(err.Error(), name+":") {
			t.Errorf("%s=yes: err = %v, want one naming %s", name, err, name)
		}
	}
}
