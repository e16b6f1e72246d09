package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

// When a device changes owner, the former owner's open sessions on it end
// within a re-check interval: a status entry saying why, then close code
// 4403 (the page shows "forbidden" and does not reconnect). Sessions on
// devices still visible stay open, and a new connection is refused at once.
func TestOwnershipChangeEndsSession(t *testing.T) {
	f := newFixture(t, nil)
	r := startRelay(t, f.coap, map[string]string{"DATABASE_URL": f.db, "SUPABASE_JWT_SECRET": jwtSecret},
		func(cfg *app.Config) { cfg.RecheckEvery = 200 * time.Millisecond })
	tok := f.token(t, alice)
	gone := mustDial(t, r, "DEV-A", dialOpts{token: tok, form: "subprotocol"})
	gone2 := mustDial(t, r, "DEV-A", dialOpts{token: tok}) // a second tab
	kept := mustDial(t, r, "DEV-B", dialOpts{token: tok, form: "subprotocol"})
	testwait.For(t, "a re-check of the open sessions", func() bool {
		return counter(t, r.Metrics, "nbiot_relay_access_rechecks_total", "result", "allowed") >= 2
	})

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	changed := time.Now()
	if _, err := conn.Exec(ctx, "update public.devices set owner_id = $1 where devid = 'DEV-A'", bob); err != nil {
		t.Fatal(err)
	}
	for _, ws := range []*websocket.Conn{gone, gone2} {
		status, closeErr := readUntilClose(t, ws)
		if closeErr.Code != 4403 {
			t.Fatalf("close %d %q, want 4403", closeErr.Code, closeErr.Text)
		}
		if status == nil || status.Type != "status" || status.DeviceID != "DEV-A" || status.Data["access"] != "revoked" {
			t.Errorf("last frame before the close %+v, want the revoked status entry", status)
		}
	}
	t.Logf("sessions ended %v after the owner changed (re-check every 200 ms)", time.Since(changed).Round(time.Millisecond))
	if _, code := dialBrowser(t, r, "DEV-A", dialOpts{token: tok}); code != 403 {
		t.Errorf("alice reconnecting to DEV-A: HTTP %d, want 403", code)
	}
	if got := counter(t, r.Metrics, "nbiot_relay_sessions_revoked_total", "", ""); got != 2 {
		t.Errorf("revoked %v, want 2", got)
	}
	// DEV-B is still alice's: its session carries on.
	sendUplink(t, dialCoAP(t, f.coap), "DEV-B", 9)
	if fr := readFrame(t, kept); fr.DeviceID != "DEV-B" || fr.Data["uplink_count"] != 9.0 {
		t.Fatalf("DEV-B: %s", fr.raw)
	}
	// bob, the new owner, may watch it.
	mustDial(t, r, "DEV-A", dialOpts{token: f.token(t, bob)})
}

// A database outage during a re-check keeps sessions open.
func TestRecheckErrorKeepsSession(t *testing.T) {
	f := newFixture(t, nil)
	var r *app.App
	r = startRelay(t, f.coap, map[string]string{"DATABASE_URL": f.db, "SUPABASE_JWT_SECRET": jwtSecret},
		func(cfg *app.Config) { cfg.RecheckEvery = 100 * time.Millisecond })
	ws := mustDial(t, r, "DEV-A", dialOpts{token: f.token(t, alice)})
	regrant := withoutDevicesGrant(t, f.db, r)
	regrant()
	sendUplink(t, dialCoAP(t, f.coap), "DEV-A", 4)
	if fr := readFrame(t, ws); fr.Data["uplink_count"] != 4.0 {
		t.Fatalf("got %s", fr.raw)
	}
}

// withoutDevicesGrant revokes role authenticated's right to read devices,
// so that access checks fail (they do not deny), and returns once r's
// re-checks failed twice; regrant gives the right back.
func withoutDevicesGrant(t *testing.T, db string, r *app.App) (regrant func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(ctx) })
	if _, err := conn.Exec(ctx, "revoke select on public.devices from authenticated"); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "failed re-checks", func() bool {
		return counter(t, r.Metrics, "nbiot_relay_access_rechecks_total", "result", "error") >= 2
	})
	return func() {
		if _, err := conn.Exec(ctx, "grant select on public.devices to authenticated"); err != nil {
			t.Fatal(err)
		}
	}
}

// The same through Supabase REST, whose answer to a missing grant is 403
// (42501, permission denied): a fault of the deployment, not a denial, so
// the open session stays and a new connection gets 503, not 403 (it was
// read as "nothing visible", and every session of every user ended 4403).
func TestRecheckErrorKeepsSessionREST(t *testing.T) {
	f := newFloodEnv(t, 0, 2, nil, func(cfg *app.Config) { cfg.RecheckEvery = 100 * time.Millisecond })
	tok := f.token(t, floodUser(0))
	ws, code, err := f.open(tok, "192.0.2.1", floodDev(0))
	if err != nil {
		t.Fatalf("dial: HTTP %d: %v", code, err)
	}
	defer ws.Close()
	regrant := withoutDevicesGrant(t, f.db, f.relay)
	// Another user's first connection: the check fails, it does not deny
	// (nor cache a denial).
	other := f.token(t, floodUser(1))
	if code, err := f.dial(other, "192.0.2.2", floodDev(1)); code != http.StatusServiceUnavailable {
		t.Errorf("new connection during the fault: HTTP %d (%v), want 503", code, err)
	}
	regrant()
	sendUplink(t, dialCoAP(t, f.coap), floodDev(0), 4)
	if fr := readFrame(t, ws); fr.Data["uplink_count"] != 4.0 {
		t.Fatalf("got %s", fr.raw)
	}
	if code, err := f.dial(other, "192.0.2.2", floodDev(1)); code != http.StatusSwitchingProtocols {
		t.Errorf("new connection after the fault: HTTP %d (%v), want 101", code, err)
	}
}

// A token the relay still accepts (exp passed, inside its 30 s leeway) is
// refused by Supabase REST with 401: that is about the token, so the
// browser gets 401 (it refreshes its token), and the user's next token is
// asked about afresh. It was cached as a denial of the device for the
// user: 403, and the fresh token refused too for 5 s.
func TestTokenRefusedByTheDatabaseIsNotADenial(t *testing.T) {
	f := newFloodEnv(t, 0, 1, nil, nil)
	late := userToken(t, jwtSecret, floodUser(0), f.iss, time.Now().Add(-5*time.Second))
	if code, err := f.dial(late, "192.0.2.1", floodDev(0)); code != http.StatusUnauthorized {
		t.Fatalf("token past exp, inside the leeway: HTTP %d (%v), want 401", code, err)
	}
	if got := counter(t, f.relay.Metrics, "nbiot_relay_auth_failures_total", "reason", "database"); got != 1 {
		t.Errorf("auth failures (database) = %v, want 1", got)
	}
	if code, err := f.dial(f.token(t, floodUser(0)), "192.0.2.1", floodDev(0)); code != http.StatusSwitchingProtocols {
		t.Fatalf("fresh token: HTTP %d (%v), want 101", code, err)
	}
}

// A sweep asks about several users at once, at most 4 (half of the access
// cache's concurrent checks, the rest left to new connections): one at a
// time, 250 users 30 ms away took 8.3 s, and a revocation waited for it.
func TestRechecksAskSeveralUsersAtOnce(t *testing.T) {
	const users = 8
	f := newFloodEnv(t, 100*time.Millisecond, users, nil, func(cfg *app.Config) { cfg.RecheckEvery = 50 * time.Millisecond })
	for i := range users {
		ws, code, err := f.open(f.token(t, floodUser(i)), "192.0.2.1", floodDev(i))
		if err != nil || ws == nil {
			t.Fatalf("dial %d: HTTP %d: %v", i, code, err)
		}
		defer ws.Close()
	}
	// From here only sweeps ask the backend (the dials' checks overlapped
	// the first ones).
	f.peak.Store(f.inFlight.Load())
	base := counter(t, f.relay.Metrics, "nbiot_relay_access_rechecks_total", "result", "allowed")
	testwait.For(t, "two sweeps", func() bool {
		return counter(t, f.relay.Metrics, "nbiot_relay_access_rechecks_total", "result", "allowed") >= base+2*users
	})
	if p := f.peak.Load(); p < 2 || p > 4 {
		t.Errorf("at most %d checks at the backend at once, want 2 to 4", p)
	}
}

// readUntilClose reads frames until the close and returns the last frame
// before it.
func readUntilClose(t *testing.T, ws *websocket.Conn) (*frame, *websocket.CloseError) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var last *frame
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("read: %v, want a close frame", err)
			}
			return last, ce
		}
		var f frame
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		f.raw = b
		last = &f
	}
}

// The same through Supabase REST (fakepostgrest on the real database):
// the re-check asks devid=in.(…) with the user's own token.
func TestOwnershipChangeEndsSessionREST(t *testing.T) {
	f := newFloodEnv(t, 0, 2, nil, func(cfg *app.Config) { cfg.RecheckEvery = 200 * time.Millisecond })
	d := websocket.Dialer{Subprotocols: []string{"nbiot-live", "access_token." + f.token(t, floodUser(0))}}
	ws, _, err := d.Dial("ws://"+f.relay.HTTPAddr().String()+"/device-logs?deviceId="+floodDev(0), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	testwait.For(t, "a re-check", func() bool {
		return counter(t, f.relay.Metrics, "nbiot_relay_access_rechecks_total", "result", "allowed") >= 1
	})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "update public.devices set owner_id = $1 where devid = $2", floodUser(1), floodDev(0)); err != nil {
		t.Fatal(err)
	}
	status, closeErr := readUntilClose(t, ws)
	if closeErr.Code != 4403 || status == nil || status.Data["access"] != "revoked" {
		t.Fatalf("close %d, last frame %+v: want the revoked status entry then 4403", closeErr.Code, status)
	}
}
