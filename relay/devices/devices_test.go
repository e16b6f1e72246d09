package devices_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/auth"
	"github.com/nbiot-live/nbiot-live/relay/devices"
)

const (
	secret      = "devices-test-jwt-secret-0123456789abcdef"
	publishable = "sb_publishable_devices_test"
)

// seed makes two owners and their devices, plus one device nobody owns,
// in a fresh migrated database.
func seed(t *testing.T) (dbURL string, alice, bob uuid.UUID) {
	t.Helper()
	dbURL = pgtest.NewDB(t)
	alice, bob = uuid.New(), uuid.New()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`insert into auth.users (id, email) values ($1, 'alice@example.com'), ($2, 'bob@example.com')`, []any{alice, bob}},
		{`insert into public.devices (devid, owner_id, name, last_seen_at) values
			('ALICE-1', $1, 'kitchen', '2026-01-15T10:00:00Z'),
			('ALICE-2', $1, null, '2026-01-15T12:00:00Z'),
			('ALICE-3', $1, 'never seen', null),
			('BOB-1', $2, 'bob''s', '2026-01-15T13:00:00Z'),
			('NOBODY', null, null, '2026-01-15T14:00:00Z')`, []any{alice, bob}},
	} {
		if _, err := conn.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}
	return dbURL, alice, bob
}

func token(t *testing.T, user uuid.UUID, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user.String(), "role": "authenticated", "aud": "authenticated",
		"iat": now.Add(-time.Minute).Unix(), "exp": now.Add(ttl).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func verifier(t *testing.T) *auth.Verifier {
	t.Helper()
	v, err := auth.NewVerifier(t.Context(), auth.Options{Secret: []byte(secret)})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// get asks path of srv with an Authorization header when bearer is set.
func get(t *testing.T, srv *httptest.Server, path, bearer string) (int, []map[string]any) {
	t.Helper()
	req, err := http.NewRequest("GET", srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []map[string]any
	if resp.StatusCode == 200 {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, out
}

func summary(list []map[string]any) string {
	s := ""
	for _, d := range list {
		s += fmt.Sprintf("%v|%v|%v;", d["devid"], d["name"], d["last_seen_at"])
	}
	return s
}

// Both backends read under RLS: the owner lists exactly their devices,
// most recently seen first (never seen last); another user lists theirs;
// a bad or missing token is 401.
func TestOwnerListsOnlyTheirDevices(t *testing.T) {
	dbURL, alice, bob := seed(t)
	pg, err := access.NewPostgres(context.Background(), dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	rest := fakepostgrest.Start(t, dbURL, fakepostgrest.Options{JWTSecret: []byte(secret), PublishableKey: publishable})
	for name, o := range map[string]devices.Options{
		"postgres": {Verifier: verifier(t), Postgres: pg},
		"rest":     {Verifier: verifier(t), RESTURL: rest.URL, APIKey: publishable},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(devices.New(o))
			t.Cleanup(srv.Close)
			code, list := get(t, srv, "/devices", token(t, alice, time.Hour))
			want := "ALICE-2|<nil>|2026-01-15T12:00:00Z;ALICE-1|kitchen|2026-01-15T10:00:00Z;ALICE-3|never seen|<nil>;"
			if code != 200 || summary(list) != want {
				t.Errorf("alice: %d %s\nwant 200 %s", code, summary(list), want)
			}
			if code, list := get(t, srv, "/devices?access_token="+token(t, bob, time.Hour), ""); code != 200 || summary(list) != "BOB-1|bob's|2026-01-15T13:00:00Z;" {
				t.Errorf("bob (token in the query): %d %s", code, summary(list))
			}
			if code, list := get(t, srv, "/devices", token(t, uuid.New(), time.Hour)); code != 200 || list == nil || len(list) != 0 {
				t.Errorf("a user without devices: %d %v, want 200 []", code, list)
			}
			for what, bearer := range map[string]string{
				"no token": "", "expired": token(t, alice, -time.Hour), "garbage": "not.a.jwt",
			} {
				if code, _ := get(t, srv, "/devices", bearer); code != http.StatusUnauthorized {
					t.Errorf("%s: %d, want 401", what, code)
				}
			}
		})
	}
}

// A grant missing on public.devices is the deployment's fault: 503 from
// both backends, never an empty list (PostgREST's 403 read as "nothing to
// show"). A token PostgREST refuses (exp passed, inside the relay's
// leeway) is 401, so the page refreshes it.
func TestDatabaseFaultsAreNotAnEmptyList(t *testing.T) {
	dbURL, alice, _ := seed(t)
	ctx := context.Background()
	pg, err := access.NewPostgres(ctx, dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	rest := fakepostgrest.Start(t, dbURL, fakepostgrest.Options{JWTSecret: []byte(secret), PublishableKey: publishable})
	pgSrv := httptest.NewServer(devices.New(devices.Options{Verifier: verifier(t), Postgres: pg}))
	t.Cleanup(pgSrv.Close)
	restSrv := httptest.NewServer(devices.New(devices.Options{Verifier: verifier(t), RESTURL: rest.URL, APIKey: publishable}))
	t.Cleanup(restSrv.Close)
	if code, list := get(t, restSrv, "/devices", token(t, alice, -5*time.Second)); code != http.StatusUnauthorized {
		t.Errorf("rest, token refused by PostgREST: %d %v, want 401", code, list)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "revoke select on public.devices from authenticated"); err != nil {
		t.Fatal(err)
	}
	for name, srv := range map[string]*httptest.Server{"postgres": pgSrv, "rest": restSrv} {
		if code, list := get(t, srv, "/devices", token(t, alice, time.Hour)); code != http.StatusServiceUnavailable {
			t.Errorf("%s, grant missing: %d %v, want 503", name, code, list)
		}
	}
}

// More than Limit devices: the answer is cut and says so.
func TestListIsBounded(t *testing.T) {
	dbURL, alice, _ := seed(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `insert into public.devices (devid, owner_id)
		select 'MANY-' || g, $1 from generate_series(1, $2) g`, alice, devices.Limit); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close(ctx)
	pg, err := access.NewPostgres(ctx, dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	srv := httptest.NewServer(devices.New(devices.Options{Verifier: verifier(t), Postgres: pg}))
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest("GET", srv.URL+"/devices", nil)
	req.Header.Set("Authorization", "Bearer "+token(t, alice, time.Hour))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list []devices.Device
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	if len(list) != devices.Limit || resp.Header.Get("X-Devices-Truncated") != "true" {
		t.Errorf("%d devices, truncated header %q; want %d and true", len(list), resp.Header.Get("X-Devices-Truncated"), devices.Limit)
	}
}

// Without sign-in (AUTH_DISABLED) there is no user: 404, and the page
// falls back to typing an ID.
func TestNoSignInIsNotFound(t *testing.T) {
	srv := httptest.NewServer(devices.New(devices.Options{}))
	t.Cleanup(srv.Close)
	if code, _ := get(t, srv, "/devices", "x.y.z"); code != http.StatusNotFound {
		t.Errorf("status %d, want 404", code)
	}
}
