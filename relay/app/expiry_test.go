package app_test

import (
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

// Authorization holds for the token's lifetime: when the token stops being
// valid (exp plus the verifier's 30 s clock-skew leeway) the relay ends the
// session with close code 4401, and a reconnect with the same token is
// refused with 401 rather than accepted and closed again.
func TestSessionEndsWhenTokenExpires(t *testing.T) {
	db := pgtest.NewDB(t)
	seed(t, db, []string{alice}, map[string]string{"DEV-A": alice})
	c := startCoAP(t, "", "")
	// The relay's clock runs ahead of the real one by offset.
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	r := startRelay(t, c, map[string]string{"DATABASE_URL": db, "SUPABASE_JWT_SECRET": jwtSecret},
		func(cfg *app.Config) { cfg.Now = now })

	exp := time.Now().Add(time.Minute).Truncate(time.Second) // exp has one-second resolution
	tok := userToken(t, jwtSecret, alice, "", exp)
	// On the relay's clock the token expired 25 s ago: still inside the
	// leeway, for about five more seconds (room for the dial on a loaded
	// machine: with one second left it was sometimes refused with 401).
	offset.Store(int64(exp.Add(25 * time.Second).Sub(time.Now())))
	ws := mustDial(t, r, "DEV-A", dialOpts{token: tok, form: "subprotocol"})
	_ = ws.SetReadDeadline(time.Now().Add(15 * time.Second))
	var closeErr *websocket.CloseError
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue // a frame: keep reading until the close
		}
		if !errors.As(err, &closeErr) {
			t.Fatalf("read: %v, want a close frame", err)
		}
		break
	}
	if closeErr.Code != 4401 || closeErr.Text != "token expired" {
		t.Fatalf("close %d %q, want 4401 token expired", closeErr.Code, closeErr.Text)
	}
	if at := now(); at.Before(exp.Add(30 * time.Second)) {
		t.Errorf("closed at %v on the relay's clock, before exp+leeway %v", at, exp.Add(30*time.Second))
	}
	// Counted once the server side of the connection has ended.
	testwait.For(t, "disconnects{reason=token_expired} = 1", func() bool {
		return counter(t, r.Metrics, "nbiot_relay_disconnects_total", "reason", "token_expired") == 1
	})
	if _, code := dialBrowser(t, r, "DEV-A", dialOpts{token: tok, form: "subprotocol"}); code != http.StatusUnauthorized {
		t.Errorf("reconnect with the expired token: HTTP %d, want 401", code)
	}
}
