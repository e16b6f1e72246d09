package app_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// lockedBuffer collects log output from concurrent handlers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A token in ?access_token= (links from an existing app) is accepted, and
// no log line, at debug level, ever holds it: not when the connection is
// served, refused (bad token, foreign device, quota) or ends.
func TestQueryTokenNeverLogged(t *testing.T) {
	f := newFixture(t, nil)
	var logs lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := startRelayLogged(t, f.coap, map[string]string{"DATABASE_URL": f.db, "SUPABASE_JWT_SECRET": jwtSecret, "MAX_CONNECTIONS_PER_USER": "1"}, nil, logger)
	good := f.token(t, alice)
	expired := userToken(t, jwtSecret, alice, "", time.Now().Add(-time.Hour))
	forged := userToken(t, "another-secret-0123456789abcdef-0123456789", alice, "", time.Now().Add(time.Hour))

	ws := mustDial(t, r, "DEV-A", dialOpts{token: good, form: "query"})
	if _, code := dialBrowser(t, r, "DEV-B", dialOpts{token: good, form: "query"}); code != http.StatusTooManyRequests {
		t.Errorf("over the cap: HTTP %d, want 429", code)
	}
	_ = ws.Close()
	testwait.For(t, "the close", func() bool { return gauge(t, r.Metrics, "nbiot_relay_connections") == 0 })
	if _, code := dialBrowser(t, r, "DEV-C", dialOpts{token: good, form: "query"}); code != http.StatusForbidden {
		t.Errorf("foreign device: HTTP %d, want 403", code)
	}
	for _, tok := range []string{expired, forged, good + "x"} {
		if _, code := dialBrowser(t, r, "DEV-A", dialOpts{token: tok, form: "query"}); code != http.StatusUnauthorized {
			t.Errorf("bad token: HTTP %d, want 401", code)
		}
	}
	// A malformed request line with the token: the server's own error log.
	resp, err := http.Get("http://" + r.HTTPAddr().String() + "/device-logs?deviceId=%zz&access_token=" + good)
	if err == nil {
		resp.Body.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "browser connected") {
		t.Fatalf("debug logs missing (test broken?):\n%s", out)
	}
	for name, tok := range map[string]string{"valid": good, "expired": expired, "forged": forged} {
		sig := tok[strings.LastIndexByte(tok, '.')+1:]
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, tok) || strings.Contains(line, sig) {
				t.Errorf("a log line holds the %s token: %s", name, line)
			}
		}
	}
}
