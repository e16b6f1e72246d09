package app_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/logtest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

func TestShutdownClosesBrowsersGoingAway(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	ws := mustDial(t, r, "D1", dialOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Shutdown(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("read after shutdown: %v, want close 1001", err)
	}
	testwait.For(t, "coap-server to lose the relay's subscription", func() bool {
		return gauge(t, c.Metrics, "nbiot_ws_subscribers") == 0
	})
}

// TestTokensNeverLogged runs accepted and refused connections with every
// token form at debug level and checks that no token (nor the upstream
// token or the JWT secret) reaches the log.
func TestTokensNeverLogged(t *testing.T) {
	db := pgtest.NewDB(t)
	seed(t, db, []string{alice}, map[string]string{"DEV-A": alice})
	c := startCoAP(t, "", "")
	cfg, err := app.FromEnv(env(map[string]string{
		"HTTP_ADDR": "127.0.0.1:0", "UPSTREAM_URL": "ws://" + c.HTTPAddr().String() + "/ws", "UPSTREAM_TOKEN": wsToken,
		"DATABASE_URL": db, "SUPABASE_JWT_SECRET": jwtSecret, "LOG_LEVEL": "debug",
	}))
	if err != nil {
		t.Fatal(err)
	}
	var logs logtest.Buffer
	r := app.New(cfg, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	good := userToken(t, jwtSecret, alice, "", time.Now().Add(time.Hour))
	expired := userToken(t, jwtSecret, alice, "", time.Now().Add(-time.Hour))
	for _, form := range []string{"header", "query", "subprotocol"} {
		ws := mustDial(t, r, "DEV-A", dialOpts{token: good, form: form})
		_ = ws.Close()
		dialBrowser(t, r, "DEV-A", dialOpts{token: expired, form: form})
		dialBrowser(t, r, "bad.id", dialOpts{token: good, form: form})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "browser connected") {
		t.Fatalf("debug log did not record connections:\n%s", out)
	}
	for name, secret := range map[string]string{"user token": good, "expired token": expired, "upstream token": wsToken, "jwt secret": jwtSecret} {
		// A JWT's signature part alone is enough to find a leak.
		if i := strings.LastIndexByte(secret, '.'); i >= 0 {
			secret = secret[i+1:]
		}
		if strings.Contains(out, secret) {
			t.Errorf("%s found in the log", name)
		}
	}
	if strings.Contains(out, "access_token") {
		t.Errorf("a request URL with access_token was logged")
	}
}
