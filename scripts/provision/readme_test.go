package main

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// readmeClaimSQL is the SQL-editor snippet of the README's "Give each
// device its owner" step.
func readmeClaimSQL(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(raw), "**Give each device its owner.**")
	if !ok {
		t.Fatal("README.md has no **Give each device its owner.** step")
	}
	m := regexp.MustCompile("(?s)```sql\n(.*?)```").FindStringSubmatch(after)
	if m == nil {
		t.Fatal("the owner step has no ```sql block")
	}
	return m[1]
}

// TestReadmeClaimSQL runs the README's snippet as written (for
// user@example.com and ABC123) on the migrated schema, for a device that
// has reported and for one not seen yet, and checks what matters: the user
// then sees the device under RLS, as the relay's access check asks.
func TestReadmeClaimSQL(t *testing.T) {
	snippet := readmeClaimSQL(t)
	for _, seen := range []bool{true, false} {
		name := map[bool]string{true: "reported", false: "not_seen"}[seen]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, pgtest.NewDB(t))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var uid string
			if err := conn.QueryRow(ctx, `insert into auth.users (email) values ('user@example.com') returning id::text`).Scan(&uid); err != nil {
				t.Fatal(err)
			}
			if seen {
				if _, err := conn.Exec(ctx, `insert into public.devices (devid, last_seen_at) values ('ABC123', now())`); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := conn.Exec(ctx, snippet); err != nil {
				t.Fatalf("the README's SQL fails: %v\n%s", err, snippet)
			}
			if n := visibleTo(t, conn, uid, "ABC123"); n != 1 {
				t.Errorf("after the README's SQL the owner sees %d rows of ABC123 under RLS, want 1", n)
			}
			if n := visibleTo(t, conn, "00000000-0000-4000-8000-000000000000", "ABC123"); n != 0 {
				t.Errorf("another user sees ABC123 (%d rows)", n)
			}
		})
	}
}

// visibleTo counts the devices rows the user can read, as role
// authenticated with the user's claims (what PostgREST and the relay do).
func visibleTo(t *testing.T, conn *pgx.Conn, uid, device string) int {
	t.Helper()
	ctx := context.Background()
	claims, _ := json.Marshal(map[string]string{"sub": uid, "role": "authenticated"})
	var n int
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `set local role authenticated`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `select set_config('request.jwt.claims', $1, true)`, string(claims)); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `select count(*) from public.devices where devid = $1`, device).Scan(&n)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
