package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// The local auth.uid() and auth.role() (scripts/local/bootstrap.sql) are
// Supabase's: on a connection where the legacy per-claim setting was once
// set locally (it holds an empty string afterwards, not null), the claims of
// request.jwt.claims still count. The stand-in returned null there, and
// the RLS tests could pass or fail unlike the real thing. (Found in an
// audit.)
func TestAuthUIDIsSupabases(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	const sub = "aaaaaaaa-0000-4000-8000-000000000001"
	// A transaction sets the legacy settings locally, then ends: they stay
	// defined on the connection, empty.
	if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `select set_config('request.jwt.claim.sub', 'bbbbbbbb-0000-4000-8000-000000000002', true),
			set_config('request.jwt.claim.role', 'anon', true)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var uid, role *string
	if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `select set_config('request.jwt.claims', $1, true)`, `{"sub":"`+sub+`","role":"authenticated"}`); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `select auth.uid()::text, auth.role()`).Scan(&uid, &role)
	}); err != nil {
		t.Fatal(err)
	}
	if uid == nil || *uid != sub || role == nil || *role != "authenticated" {
		t.Fatalf("auth.uid() = %v, auth.role() = %v; want %s and authenticated from request.jwt.claims", deref(uid), deref(role), sub)
	}
}

func deref(s *string) string {
	if s == nil {
		return "null"
	}
	return *s
}
