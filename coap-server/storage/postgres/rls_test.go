package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// TestRLS stores uplinks with the writer, then reads every table as the
// roles PostgREST uses (set local role + request.jwt.claims, as Supabase
// does): a user sees only their devices' rows, anon nothing, service_role
// everything.
func TestRLS(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	w := newWriter(t, dbURL)
	alice, bob := uuid.New(), uuid.New()
	now := time.Now()
	var recs []uplink.Accepted
	for _, d := range []string{"ALICE1", "ALICE2", "BOB1", "NOBODY"} {
		recs = append(recs, storagetest.Rec(d, now, storagetest.FullUplink(d, 1)))
	}
	rows := storage.RowsOf(recs)
	if err := w.Write(context.Background(), &rows); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		`insert into auth.users (id) values ('` + alice.String() + `'), ('` + bob.String() + `')`,
		`update devices set owner_id = '` + alice.String() + `' where devid like 'ALICE%'`,
		`update devices set owner_id = '` + bob.String() + `' where devid = 'BOB1'`,
		`insert into device_credentials (devid, psk) values ('ALICE1', '\x00112233445566778899aabbccddeeff')`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}

	// count runs select count(*) from table as role with claims; -1 means
	// permission denied (no grant at all).
	count := func(role, claims, table string) int {
		t.Helper()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)", role, claims); err != nil {
			t.Fatal(err)
		}
		var n int
		err = tx.QueryRow(ctx, "select count(*) from public."+table).Scan(&n)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42501" {
			return -1
		}
		if err != nil {
			t.Fatalf("%s on %s: %v", role, table, err)
		}
		return n
	}
	aliceClaims := fmt.Sprintf(`{"role":"authenticated","sub":"%s"}`, alice)
	strangerClaims := fmt.Sprintf(`{"role":"authenticated","sub":"%s"}`, uuid.New())
	for _, c := range []struct {
		table                          string
		alice, stranger, anon, service int
	}{
		// per device: 1 devices row, 1 config, 1 activity, 5 sensor rows
		{"devices", 2, 0, -1, 4},
		{"device_config", 2, 0, -1, 4},
		{"activity", 2, 0, -1, 4},
		{"sensor_data", 10, 0, -1, 20},
		{"device_downlinks", 0, 0, -1, 0},
		{"device_credentials", -1, -1, -1, 1},
	} {
		t.Run(c.table, func(t *testing.T) {
			if got := count("authenticated", aliceClaims, c.table); got != c.alice {
				t.Errorf("alice sees %d, want %d", got, c.alice)
			}
			if got := count("authenticated", strangerClaims, c.table); got != c.stranger {
				t.Errorf("a user without devices sees %d, want %d", got, c.stranger)
			}
			if got := count("anon", `{"role":"anon"}`, c.table); got != c.anon && got != 0 {
				t.Errorf("anon sees %d rows", got)
			}
			if got := count("service_role", `{"role":"service_role"}`, c.table); got != c.service {
				t.Errorf("service_role sees %d, want %d", got, c.service)
			}
		})
	}

	// A user cannot write measurements, even for their own device.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	_, _ = tx.Exec(ctx, "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)", aliceClaims)
	_, err = tx.Exec(ctx, `insert into activity (uplink_id, devid, uplink_count, received_at) values (gen_random_uuid(), 'ALICE1', 1, now())`)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Errorf("user insert into activity: %v, want 42501", err)
	}
}
