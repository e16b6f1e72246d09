package app_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// TestRESTAccessMode runs the relay with SUPABASE_URL + SUPABASE_ANON_KEY
// (no DATABASE_URL) against fakepostgrest on the real migrated database.
func TestRESTAccessMode(t *testing.T) {
	const publishable = "sb_publishable_relay_test_0123"
	db := pgtest.NewDB(t)
	seed(t, db, []string{alice, bob}, map[string]string{"DEV-A": alice})
	rest := fakepostgrest.Start(t, db, fakepostgrest.Options{JWTSecret: []byte(jwtSecret), PublishableKey: publishable})
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{
		"SUPABASE_URL": rest.URL, "SUPABASE_ANON_KEY": publishable, "SUPABASE_JWT_SECRET": jwtSecret,
	}, nil)
	iss := rest.URL + "/auth/v1"
	ws := mustDial(t, r, "DEV-A", dialOpts{token: userToken(t, jwtSecret, alice, iss, time.Now().Add(time.Hour)), form: "subprotocol"})
	sendUplink(t, dialCoAP(t, c), "DEV-A", 5)
	if fr := readFrame(t, ws); fr.Data["uplink_count"] != 5.0 {
		t.Fatalf("got %s", fr.raw)
	}
	if _, code := dialBrowser(t, r, "DEV-A", dialOpts{token: userToken(t, jwtSecret, bob, iss, time.Now().Add(time.Hour))}); code != http.StatusForbidden {
		t.Errorf("bob: HTTP %d, want 403", code)
	}
	// SUPABASE_URL sets the expected issuer: a token of another project is refused.
	if _, code := dialBrowser(t, r, "DEV-A", dialOpts{token: userToken(t, jwtSecret, alice, "https://other.supabase.co/auth/v1", time.Now().Add(time.Hour))}); code != http.StatusUnauthorized {
		t.Errorf("foreign issuer: HTTP %d, want 401", code)
	}
}
