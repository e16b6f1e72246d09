package app_test

import (
	"net/http"
	"testing"

	"github.com/nbiot-live/nbiot-live/relay/app"
)

func TestConnectionLimit(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true", "MAX_CONNECTIONS": "2", "MAX_WATCHED_DEVICES": "5"}, nil)
	mustDial(t, r, "D1", dialOpts{})
	mustDial(t, r, "D2", dialOpts{})
	if ws, code := dialBrowser(t, r, "D3", dialOpts{}); ws != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("third connection: HTTP %d, want 503", code)
	}
	if got := counter(t, r.Metrics, "nbiot_relay_rejected_total", "reason", "limit"); got != 1 {
		t.Errorf("rejected{limit} %v, want 1", got)
	}
}

func TestWatchedDeviceLimit(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, func(cfg *app.Config) { cfg.MaxDevices = 1 })
	mustDial(t, r, "D1", dialOpts{})
	mustDial(t, r, "D1", dialOpts{}) // same device: shares the link
	if ws, code := dialBrowser(t, r, "D2", dialOpts{}); ws != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("second device: HTTP %d, want 503", code)
	}
}

// TestSubprotocolTokenNeedsProtocol: a token entry without "nbiot-live"
// could not be answered without echoing the token, so it is refused.
func TestSubprotocolTokenNeedsProtocol(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.token(t, alice)
	if ws, code := dialBrowser(t, f.relay, "DEV-A", dialOpts{protocols: []string{"access_token." + tok}}); ws != nil || code != http.StatusBadRequest {
		t.Fatalf("HTTP %d, want 400", code)
	}
}
