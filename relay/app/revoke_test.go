package app_test

import (
	"context"
	"encoding/json"
	"errors"
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
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Revoke the role's right to read devices: the check errors, it does not deny.
	if _, err := conn.Exec(ctx, "revoke select on public.devices from authenticated"); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "failed re-checks", func() bool {
		return counter(t, r.Metrics, "nbiot_relay_access_rechecks_total", "result", "error") >= 2
	})
	if _, err := conn.Exec(ctx, "grant select on public.devices to authenticated"); err != nil {
		t.Fatal(err)
	}
	sendUplink(t, dialCoAP(t, f.coap), "DEV-A", 4)
	if fr := readFrame(t, ws); fr.Data["uplink_count"] != 4.0 {
		t.Fatalf("got %s", fr.raw)
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
