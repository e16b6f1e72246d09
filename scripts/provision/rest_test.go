package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

var (
	restJWTSecret   = []byte("provision-rest-test-jwt-secret-0123")
	restSecretKey   = "sb_secret_provisionresttest0123"
	restPublishable = "sb_publishable_provisionresttest0123"
)

// restEnv is a migrated database behind the PostgREST stand-in, a user,
// and a superuser connection to look at the rows.
func restEnv(t *testing.T) (url string, conn *pgx.Conn, owner string) {
	t.Helper()
	db := pgtest.NewDB(t)
	srv := fakepostgrest.Start(t, db, fakepostgrest.Options{
		JWTSecret: restJWTSecret, SecretKey: restSecretKey, PublishableKey: restPublishable})
	conn, err := pgx.Connect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if err := conn.QueryRow(context.Background(), `insert into auth.users (email) values ('rest-owner@example.com') returning id::text`).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	return srv.URL, conn, owner
}

// TestProvisionREST provisions through Supabase REST with both kinds of
// service key, as a REST-only deploy (no DATABASE_URL) must: the row, its
// owner and the key land in the real tables through the real grants and RLS.
func TestProvisionREST(t *testing.T) {
	for name, key := range map[string]string{
		"sb_secret":        restSecretKey,
		"service_role_jwt": fakepostgrest.SignJWT(t, restJWTSecret, map[string]any{"role": "service_role"}),
	} {
		t.Run(name, func(t *testing.T) {
			url, conn, owner := restEnv(t)
			env := envOf(map[string]string{"SUPABASE_URL": url + "/", "SUPABASE_SERVICE_KEY": key})
			var out bytes.Buffer
			if err := run([]string{"-device", "rest-1", "-owner", owner}, env, &out); err != nil {
				t.Fatal(err)
			}
			printed := printedPSK(t, out.String())
			var psk []byte
			var gotOwner string
			if err := conn.QueryRow(context.Background(), `select c.psk, d.owner_id::text from public.device_credentials c join public.devices d using (devid) where devid = 'rest-1'`).Scan(&psk, &gotOwner); err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(psk) != printed || gotOwner != owner {
				t.Errorf("stored psk %x owner %s; printed %s, owner %s", psk, gotOwner, printed, owner)
			}
			if strings.Contains(out.String(), key) {
				t.Error("the service key appears in the output")
			}

			// Again without -rotate: refused, key unchanged; -rotate replaces
			// it; a run without -owner keeps the owner.
			if err := run([]string{"-device", "rest-1"}, env, &out); !errors.Is(err, errKeyExists) {
				t.Errorf("second provisioning without -rotate: %v, want errKeyExists", err)
			}
			out.Reset()
			if err := run([]string{"-device", "rest-1", "-rotate"}, env, &out); err != nil {
				t.Fatalf("rotate: %v", err)
			}
			rotated := printedPSK(t, out.String())
			if err := conn.QueryRow(context.Background(), `select c.psk, d.owner_id::text from public.device_credentials c join public.devices d using (devid) where devid = 'rest-1'`).Scan(&psk, &gotOwner); err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(psk) != rotated || rotated == printed || gotOwner != owner {
				t.Errorf("after -rotate: stored %x owner %s; printed %s (first %s)", psk, gotOwner, rotated, printed)
			}

			// A device that already reported gets an owner and no key.
			if _, err := conn.Exec(context.Background(), `insert into public.devices (devid, last_seen_at) values ('rest-seen', now())`); err != nil {
				t.Fatal(err)
			}
			if err := run([]string{"-device", "rest-seen", "-owner", owner, "-no-psk"}, env, &out); err != nil {
				t.Fatal(err)
			}
			assertClaimed(t, conn, "rest-seen", owner)
		})
	}
}

// TestProvisionRESTRefusals: the mistakes a first REST deploy makes get an
// answer that says what to do, and none writes anything.
func TestProvisionRESTRefusals(t *testing.T) {
	url, conn, _ := restEnv(t)
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"publishable key", map[string]string{"SUPABASE_URL": url, "SUPABASE_SERVICE_KEY": restPublishable},
			[]string{"-device", "rest-x"}, "SUPABASE_SERVICE_KEY"},
		{"anon JWT", map[string]string{"SUPABASE_URL": url, "SUPABASE_SERVICE_KEY": fakepostgrest.SignJWT(t, restJWTSecret, map[string]any{"role": "anon"})},
			[]string{"-device", "rest-x"}, "SUPABASE_SERVICE_KEY"},
		{"no key", map[string]string{"SUPABASE_URL": url},
			[]string{"-device", "rest-x"}, "SUPABASE_SERVICE_KEY"},
		{"email owner", map[string]string{"SUPABASE_URL": url, "SUPABASE_SERVICE_KEY": restSecretKey},
			[]string{"-device", "rest-x", "-owner", "rest-owner@example.com"}, "UUID"},
		{"unknown owner", map[string]string{"SUPABASE_URL": url, "SUPABASE_SERVICE_KEY": restSecretKey},
			[]string{"-device", "rest-x", "-owner", "00000000-0000-4000-8000-000000000000"}, "no auth.users row"},
		{"wrong key", map[string]string{"SUPABASE_URL": url, "SUPABASE_SERVICE_KEY": "sb_secret_notthisproject0123"},
			[]string{"-device", "rest-x"}, "HTTP 401"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := run(c.args, envOf(c.env), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one naming %q", err, c.want)
			}
			if key := c.env["SUPABASE_SERVICE_KEY"]; key != "" && strings.Contains(err.Error(), key) {
				t.Errorf("the error shows the key: %v", err)
			}
		})
	}
	var n int
	if err := conn.QueryRow(context.Background(), `select count(*) from public.devices where devid = 'rest-x'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("refused runs wrote %d devices rows (%v)", n, err)
	}
}
