package app_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	coapapp "github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

const (
	alice = "11111111-1111-1111-1111-111111111111"
	bob   = "22222222-2222-2222-2222-222222222222"
)

// fixture is coap-server + relay (Postgres access check, HS256 tokens) +
// a migrated database where alice owns DEV-A and DEV-B and bob owns DEV-C.
type fixture struct {
	coap  *coapapp.App
	relay *app.App
	db    string
}

func newFixture(t *testing.T, env map[string]string) *fixture {
	t.Helper()
	db := pgtest.NewDB(t)
	seed(t, db, []string{alice, bob}, map[string]string{"DEV-A": alice, "DEV-B": alice, "DEV-C": bob})
	c := startCoAP(t, "", "")
	e := map[string]string{"DATABASE_URL": db, "SUPABASE_JWT_SECRET": jwtSecret}
	for k, v := range env {
		e[k] = v
	}
	return &fixture{coap: c, relay: startRelay(t, c, e, nil), db: db}
}

func (f *fixture) token(t *testing.T, sub string) string {
	return userToken(t, jwtSecret, sub, "", time.Now().Add(time.Hour))
}

func TestOwnerReceivesUplinkWithEveryTokenForm(t *testing.T) {
	f := newFixture(t, nil)
	cc := dialCoAP(t, f.coap)
	tok := f.token(t, alice)
	for i, form := range []string{"header", "query", "subprotocol", "bare-subprotocol"} {
		t.Run(form, func(t *testing.T) {
			ws := mustDial(t, f.relay, "DEV-A", dialOpts{token: tok, form: form})
			if strings.Contains(form, "subprotocol") && ws.Subprotocol() != "nbiot-live" {
				t.Errorf("subprotocol %q, want nbiot-live (never the token entry)", ws.Subprotocol())
			}
			// The uplink is sent right after the handshake: the relay must
			// already be subscribed upstream.
			count := uint32(100 + i)
			sendUplink(t, cc, "DEV-A", count)
			fr := readFrame(t, ws)
			if fr.DeviceID != "DEV-A" || fr.Type != "uplink" || fr.Message != fmt.Sprintf("Received uplink #%d", count) {
				t.Fatalf("frame %s", fr.raw)
			}
			if fr.Data["temperature"] != 21.5 || fr.Data["uplink_count"] != float64(count) {
				t.Errorf("data %v", fr.Data)
			}
			for _, k := range []string{"uplink_count", "temperature", "activity", "wifi_count", "reboot"} {
				if _, ok := fr.Data[k]; !ok {
					t.Errorf("data lacks %q: %s", k, fr.raw)
				}
			}
			_ = ws.Close()
		})
	}
	if n := counter(t, f.relay.Metrics, "nbiot_relay_token_source_total", "", ""); n != 4 {
		t.Errorf("token sources counted %v, want 4", n)
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t, map[string]string{"ALLOWED_ORIGINS": "https://app.example.com"})
	good := f.token(t, alice)
	expired := userToken(t, jwtSecret, alice, "", time.Now().Add(-time.Hour))
	forged := userToken(t, "another-secret-0123456789abcdef-0123456789", alice, "", time.Now().Add(time.Hour))
	cases := []struct {
		name   string
		device string
		o      dialOpts
		want   int
		reason string // nbiot_relay_auth_failures_total label, when 401
	}{
		{"missing token", "DEV-A", dialOpts{}, http.StatusUnauthorized, "missing"},
		{"expired token", "DEV-A", dialOpts{token: expired}, http.StatusUnauthorized, "expired"},
		{"forged token", "DEV-A", dialOpts{token: forged}, http.StatusUnauthorized, "signature"},
		{"garbage token", "DEV-A", dialOpts{token: "not-a-jwt"}, http.StatusUnauthorized, "malformed"},
		{"forged in query", "DEV-A", dialOpts{token: forged, form: "query"}, http.StatusUnauthorized, "signature"},
		{"another user's device", "DEV-C", dialOpts{token: good}, http.StatusForbidden, ""},
		{"unknown device", "NOPE", dialOpts{token: good}, http.StatusForbidden, ""},
		{"invalid device ID", "bad.id", dialOpts{token: good}, http.StatusBadRequest, ""},
		{"empty device ID", "", dialOpts{token: good}, http.StatusBadRequest, ""},
		{"foreign origin", "DEV-A", dialOpts{token: good, origin: "https://evil.example.com"}, http.StatusForbidden, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.reason != "" {
				before = counter(t, f.relay.Metrics, "nbiot_relay_auth_failures_total", "reason", tc.reason)
			}
			ws, code := dialBrowser(t, f.relay, tc.device, tc.o)
			if ws != nil || code != tc.want {
				t.Fatalf("HTTP %d, want %d", code, tc.want)
			}
			if tc.reason != "" {
				if got := counter(t, f.relay.Metrics, "nbiot_relay_auth_failures_total", "reason", tc.reason); got != before+1 {
					t.Errorf("auth failures{reason=%s} %v, want %v", tc.reason, got, before+1)
				}
			}
		})
	}
	// The listed origin and bob on his own device are accepted.
	mustDial(t, f.relay, "DEV-A", dialOpts{token: good, origin: "https://app.example.com"})
	mustDial(t, f.relay, "DEV-C", dialOpts{token: f.token(t, bob)})
}

func TestTwoDevicesNeverMix(t *testing.T) {
	f := newFixture(t, nil)
	cc := dialCoAP(t, f.coap)
	tok := f.token(t, alice)
	wsA := mustDial(t, f.relay, "DEV-A", dialOpts{token: tok})
	wsB := mustDial(t, f.relay, "DEV-B", dialOpts{token: tok})
	const n = 20
	for i := range n {
		sendUplink(t, cc, "DEV-A", uint32(i))
		sendUplink(t, cc, "DEV-B", uint32(1000+i))
	}
	for i := range n {
		if fr := readFrame(t, wsA); fr.DeviceID != "DEV-A" || fr.Data["uplink_count"] != float64(i) {
			t.Fatalf("DEV-A watcher got %s", fr.raw)
		}
		if fr := readFrame(t, wsB); fr.DeviceID != "DEV-B" || fr.Data["uplink_count"] != float64(1000+i) {
			t.Fatalf("DEV-B watcher got %s", fr.raw)
		}
	}
	if f.relay.WatchedDevices() != 2 {
		t.Errorf("watched devices %d, want 2", f.relay.WatchedDevices())
	}
}

func TestBrowsersOfOneDeviceShareOneUpstream(t *testing.T) {
	f := newFixture(t, nil)
	cc := dialCoAP(t, f.coap)
	tok := f.token(t, alice)
	ws1 := mustDial(t, f.relay, "DEV-A", dialOpts{token: tok})
	ws2 := mustDial(t, f.relay, "DEV-A", dialOpts{token: tok, form: "subprotocol"})
	// Observed on coap-server's side: one /ws subscriber for two browsers.
	if n := gauge(t, f.coap.Metrics, "nbiot_ws_subscribers"); n != 1 {
		t.Fatalf("coap-server subscribers %v, want 1", n)
	}
	sendUplink(t, cc, "DEV-A", 7)
	for _, ws := range []*websocket.Conn{ws1, ws2} {
		if fr := readFrame(t, ws); fr.Data["uplink_count"] != 7.0 {
			t.Fatalf("got %s", fr.raw)
		}
	}
	// One leaves: the upstream stays for the other.
	_ = ws1.Close()
	testwait.For(t, "relay to see the first browser leave", func() bool {
		return gauge(t, f.relay.Metrics, "nbiot_relay_connections") == 1
	})
	if n := gauge(t, f.coap.Metrics, "nbiot_ws_subscribers"); n != 1 {
		t.Fatalf("coap-server subscribers %v after one left, want 1", n)
	}
	sendUplink(t, cc, "DEV-A", 8)
	if fr := readFrame(t, ws2); fr.Data["uplink_count"] != 8.0 {
		t.Fatalf("got %s", fr.raw)
	}
	// The last leaves: the upstream closes.
	_ = ws2.Close()
	testwait.For(t, "coap-server to lose the relay's subscription", func() bool {
		return gauge(t, f.coap.Metrics, "nbiot_ws_subscribers") == 0
	})
	if f.relay.WatchedDevices() != 0 {
		t.Errorf("relay still watches %d devices", f.relay.WatchedDevices())
	}
}

func TestUpstreamRestartOnSamePort(t *testing.T) {
	db := pgtest.NewDB(t)
	seed(t, db, []string{alice}, map[string]string{"DEV-A": alice})
	dir := t.TempDir() // a restart keeps its store
	c1 := startCoAPAt(t, "127.0.0.1:0", "127.0.0.1:0", dir)
	coapAddr, httpAddr := c1.CoAPAddr().String(), c1.HTTPAddr().String()
	r := startRelay(t, c1, map[string]string{"DATABASE_URL": db, "SUPABASE_JWT_SECRET": jwtSecret}, nil)
	ws := mustDial(t, r, "DEV-A", dialOpts{token: userToken(t, jwtSecret, alice, "", time.Now().Add(time.Hour))})

	sendUplink(t, dialCoAP(t, c1), "DEV-A", 1)
	if fr := readFrame(t, ws); fr.Data["uplink_count"] != 1.0 {
		t.Fatalf("got %s", fr.raw)
	}

	stopCoAP(t, c1) // "killed": its subscribers are cut
	lost := readFrame(t, ws)
	if lost.Type != "status" || lost.DeviceID != "DEV-A" || lost.Data["upstream"] != "lost" {
		t.Fatalf("want a lost status, got %s", lost.raw)
	}
	// Reconnect attempts fail while it is down; let a few happen, then
	// start it again on the same ports.
	testwait.For(t, "failed reconnect attempts", func() bool {
		return counter(t, r.Metrics, "nbiot_relay_upstream_dial_failures_total", "", "") >= 3
	})
	c2 := startCoAPAt(t, coapAddr, httpAddr, dir)
	restored := readFrame(t, ws)
	if restored.Type != "status" || restored.Data["upstream"] != "restored" {
		t.Fatalf("want a restored status, got %s", restored.raw)
	}
	// The browser was never disconnected and gets the next uplink by itself.
	sendUplink(t, dialCoAP(t, c2), "DEV-A", 2)
	if fr := readFrame(t, ws); fr.Type != "uplink" || fr.Data["uplink_count"] != 2.0 {
		t.Fatalf("got %s", fr.raw)
	}
	if n := counter(t, r.Metrics, "nbiot_relay_status_entries_total", "", ""); n != 2 {
		t.Errorf("status entries %v, want exactly 2 (collapsed while retrying)", n)
	}
	if n := counter(t, r.Metrics, "nbiot_relay_upstream_reconnects_total", "", ""); n != 1 {
		t.Errorf("reconnects %v, want 1", n)
	}
}

func TestHealthPageAndMetrics(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	base := "http://" + r.HTTPAddr().String()
	if got := scrape(t, base+"/healthz"); got != "ok\n" {
		t.Errorf("/healthz %q", got)
	}
	if got := scrape(t, base+"/"); !strings.Contains(strings.ToLower(got), "<!doctype html") {
		t.Errorf("/ is not the page: %.100q", got)
	}
	// AUTH_DISABLED: no token needed.
	ws := mustDial(t, r, "ANY-1", dialOpts{})
	sendUplink(t, dialCoAP(t, c), "ANY-1", 3)
	if fr := readFrame(t, ws); fr.Data["uplink_count"] != 3.0 {
		t.Fatalf("got %s", fr.raw)
	}
	m := scrape(t, "http://"+r.MetricsAddr().String()+"/metrics")
	for _, name := range []string{"nbiot_relay_connections 1", "nbiot_relay_upstreams 1", "nbiot_relay_frames_forwarded_total 1",
		"nbiot_relay_upstream_reconnects_total 0", "go_goroutines"} {
		if !strings.Contains(m, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
}
