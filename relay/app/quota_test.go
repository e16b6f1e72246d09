package app_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// One user cannot hold more than MAX_CONNECTIONS_PER_USER connections:
// the next gets 429 (counted), while another user is still served.
func TestUserConnectionCap(t *testing.T) {
	f := newFixture(t, map[string]string{"MAX_CONNECTIONS_PER_USER": "2"})
	tok := f.token(t, alice)
	mustDial(t, f.relay, "DEV-A", dialOpts{token: tok, form: "subprotocol"})
	mustDial(t, f.relay, "DEV-B", dialOpts{token: tok, form: "subprotocol"})
	if ws, code := dialBrowser(t, f.relay, "DEV-A", dialOpts{token: tok, form: "subprotocol"}); ws != nil || code != http.StatusTooManyRequests {
		t.Fatalf("alice's third connection: HTTP %d, want 429", code)
	}
	if got := counter(t, f.relay.Metrics, "nbiot_relay_rejected_total", "reason", "user_limit"); got != 1 {
		t.Errorf("rejected{user_limit} %v, want 1", got)
	}
	mustDial(t, f.relay, "DEV-C", dialOpts{token: f.token(t, bob), form: "subprotocol"})
}

// A closed connection gives its place back.
func TestUserConnectionCapReleased(t *testing.T) {
	f := newFixture(t, map[string]string{"MAX_CONNECTIONS_PER_USER": "1"})
	tok := f.token(t, alice)
	ws := mustDial(t, f.relay, "DEV-A", dialOpts{token: tok})
	if _, code := dialBrowser(t, f.relay, "DEV-A", dialOpts{token: tok}); code != http.StatusTooManyRequests {
		t.Fatalf("second connection: HTTP %d, want 429", code)
	}
	_ = ws.Close()
	testwait.For(t, "the relay sees the close", func() bool { return gauge(t, f.relay.Metrics, "nbiot_relay_connections") == 0 })
	mustDial(t, f.relay, "DEV-A", dialOpts{token: tok})
}

// MAX_DEVICES_PER_USER counts distinct devices: more tabs on a device
// already watched are fine, a new device past the cap gets 429.
func TestUserDeviceCap(t *testing.T) {
	f := newFixture(t, map[string]string{"MAX_DEVICES_PER_USER": "1"})
	tok := f.token(t, alice)
	mustDial(t, f.relay, "DEV-A", dialOpts{token: tok})
	mustDial(t, f.relay, "DEV-A", dialOpts{token: tok})
	if ws, code := dialBrowser(t, f.relay, "DEV-B", dialOpts{token: tok}); ws != nil || code != http.StatusTooManyRequests {
		t.Fatalf("second device: HTTP %d, want 429", code)
	}
}

// Per client address: the TCP peer by default, whatever X-Forwarded-For
// claims; with TRUSTED_PROXY_HEADER the proxy's header.
func TestIPConnectionCap(t *testing.T) {
	c := startCoAP(t, "", "")
	xff := func(ip string) http.Header { return http.Header{"X-Forwarded-For": {ip}} }
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true", "MAX_CONNECTIONS_PER_IP": "2"}, nil)
	mustDial(t, r, "D1", dialOpts{header: xff("10.0.0.1")})
	mustDial(t, r, "D2", dialOpts{header: xff("10.0.0.2")})
	if ws, code := dialBrowser(t, r, "D3", dialOpts{header: xff("10.0.0.3")}); ws != nil || code != http.StatusTooManyRequests {
		t.Fatalf("third connection from 127.0.0.1 claiming another X-Forwarded-For: HTTP %d, want 429", code)
	}
	if got := counter(t, r.Metrics, "nbiot_relay_rejected_total", "reason", "ip_limit"); got != 1 {
		t.Errorf("rejected{ip_limit} %v, want 1", got)
	}

	proxied := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true", "MAX_CONNECTIONS_PER_IP": "1", "TRUSTED_PROXY_HEADER": "Fly-Client-IP"}, nil)
	fly := func(ip string) http.Header { return http.Header{"Fly-Client-Ip": {ip}} }
	mustDial(t, proxied, "D1", dialOpts{header: fly("203.0.113.7")})
	mustDial(t, proxied, "D1", dialOpts{header: fly("203.0.113.8")})
	if _, code := dialBrowser(t, proxied, "D1", dialOpts{header: fly("203.0.113.7")}); code != http.StatusTooManyRequests {
		t.Errorf("second connection from 203.0.113.7: HTTP %d, want 429", code)
	}
	// IPv6 is keyed by /64: one subscriber's block.
	mustDial(t, proxied, "D1", dialOpts{header: fly("2001:db8:1:2::1")})
	if _, code := dialBrowser(t, proxied, "D1", dialOpts{header: fly("2001:db8:1:2::99")}); code != http.StatusTooManyRequests {
		t.Errorf("same /64: HTTP %d, want 429", code)
	}
}

// GET /devices is a database query like an access check that misses the
// cache, and shares the relay's few database connections with them: it
// spends the same budget, so one user flooding it gets 429 (counted) while
// another user is still served. It had no bound at all.
func TestDevicesListSpendsTheCheckBudget(t *testing.T) {
	f := newFixture(t, map[string]string{"ACCESS_CHECKS_PER_MINUTE_PER_USER": "1"}) // a burst of 1, then one a minute
	list := func(sub string) (int, string) {
		resp := getBearer(t, "http://"+f.relay.HTTPAddr().String()+"/devices", f.token(t, sub))
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	if code, _ := list(alice); code != http.StatusOK {
		t.Fatalf("alice's first list: HTTP %d", code)
	}
	if code, retry := list(alice); code != http.StatusTooManyRequests || retry == "" {
		t.Fatalf("alice's second list within the minute: HTTP %d, Retry-After %q; want 429 with Retry-After", code, retry)
	}
	if got := counter(t, f.relay.Metrics, "nbiot_relay_devices_limited_total", "", ""); got != 1 {
		t.Errorf("devices limited %v, want 1", got)
	}
	if code, _ := list(bob); code != http.StatusOK {
		t.Errorf("bob's list: HTTP %d, want 200", code)
	}
}

// A plain GET of /device-logs (no WebSocket upgrade) with a valid token
// gets what the checks say (the page reads a refused WebSocket's 401 or
// 403 that way) and then 400, before the device's upstream is started; it
// used to start one (with since=0 a dedicated one, replaying the device's
// whole history) only to fail at the upgrade, as often as a client liked.
func TestPlainGetStartsNoUpstream(t *testing.T) {
	f := newFixture(t, nil)
	resp := getBearer(t, "http://"+f.relay.HTTPAddr().String()+"/device-logs?deviceId=DEV-A&since=0", f.token(t, alice))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain GET: HTTP %d, want 400", resp.StatusCode)
	}
	if got := counter(t, f.relay.Metrics, "nbiot_relay_rejected_total", "reason", "not_websocket"); got != 1 {
		t.Errorf("rejected{not_websocket} %v, want 1", got)
	}
	if got := counter(t, f.relay.Metrics, "nbiot_relay_history_starts_total", "", ""); got != 0 {
		t.Errorf("history starts %v, want 0: an upstream was started for a request that cannot be served", got)
	}
	mustDial(t, f.relay, "DEV-A", dialOpts{token: f.token(t, alice)})
}

// getBearer is a plain GET of url with token as its bearer; the body is
// read and closed.
func getBearer(t *testing.T, url, token string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}
