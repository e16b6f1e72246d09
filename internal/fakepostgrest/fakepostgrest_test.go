package fakepostgrest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

var (
	secret  = []byte("test-jwt-secret-0123456789abcdef0123")
	sbSec   = "sb_secret_testtesttesttest"
	sbPub   = "sb_publishable_testtesttest"
	options = fakepostgrest.Options{JWTSecret: secret, SecretKey: sbSec, PublishableKey: sbPub}
)

type env struct {
	t   *testing.T
	url string
	db  string
}

func start(t *testing.T) *env {
	db := pgtest.NewDB(t)
	srv := fakepostgrest.Start(t, db, options)
	return &env{t: t, url: srv.URL, db: db}
}

// do sends one request and returns the status and body.
func (e *env) do(method, path string, h map[string]string, body string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, e.db)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// norm re-encodes JSON compactly: json_agg separates rows with ", \n"
// as real PostgREST output does.
func norm(t *testing.T, b []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

var service = map[string]string{"apikey": sbSec}

func TestInsertUpsertSelect(t *testing.T) {
	e := start(t)
	prefer := map[string]string{"apikey": sbSec, "Prefer": "return=minimal,resolution=merge-duplicates"}
	code, body := e.do("POST", "/rest/v1/devices?on_conflict=devid", prefer,
		`[{"devid":"A1","last_seen_at":"2026-01-01T00:00:00Z"},{"devid":"B2","last_seen_at":"2026-01-01T00:00:01Z"}]`)
	if code != 201 || len(body) != 0 {
		t.Fatalf("insert: %d %s", code, body)
	}
	// merge-duplicates updates only the columns sent.
	e.exec(`update devices set name = 'kept' where devid = 'A1'`)
	code, body = e.do("POST", "/rest/v1/devices?on_conflict=devid", prefer, `{"devid":"A1","last_seen_at":"2026-02-01T00:00:00Z"}`)
	if code != 201 {
		t.Fatalf("upsert: %d %s", code, body)
	}
	code, body = e.do("GET", "/rest/v1/devices?select=devid,name,last_seen_at&devid=eq.A1&limit=1", service, "")
	if code != 200 {
		t.Fatalf("get: %d %s", code, body)
	}
	var got []map[string]any
	if err := json.Unmarshal(body, &got); err != nil || len(got) != 1 {
		t.Fatalf("get: %s (%v)", body, err)
	}
	if got[0]["name"] != "kept" || !strings.HasPrefix(got[0]["last_seen_at"].(string), "2026-02-01T00:00:00") {
		t.Errorf("row %v", got[0])
	}
	// ignore-duplicates leaves the row alone.
	code, _ = e.do("POST", "/rest/v1/devices", map[string]string{"apikey": sbSec, "Prefer": "resolution=ignore-duplicates"},
		`{"devid":"A1","last_seen_at":"2020-01-01T00:00:00Z"}`)
	if code != 201 {
		t.Fatalf("ignore-duplicates: %d", code)
	}
	code, body = e.do("GET", "/rest/v1/devices?select=devid&last_seen_at=gte.2026-01-15T00:00:00Z&order=devid.desc", service, "")
	if code != 200 || string(body) != `[{"devid":"A1"}]` {
		t.Errorf("filtered get: %d %s", code, body)
	}
	code, body = e.do("GET", "/rest/v1/devices?select=devid&devid=in.(A1,B2)&order=devid.desc", service, "")
	if code != 200 || norm(t, body) != `[{"devid":"B2"},{"devid":"A1"}]` {
		t.Errorf("in get: %d %s", code, body)
	}
	// PATCH with return=representation.
	code, body = e.do("PATCH", "/rest/v1/devices?devid=eq.B2", map[string]string{"apikey": sbSec, "Prefer": "return=representation"}, `{"name":"bee"}`)
	if code != 200 || !strings.Contains(string(body), `"name":"bee"`) {
		t.Errorf("patch: %d %s", code, body)
	}
}

func TestErrors(t *testing.T) {
	e := start(t)
	e.exec(`insert into devices (devid) values ('D1')`)
	user := fakepostgrest.SignJWT(t, secret, map[string]any{"role": "authenticated", "sub": uuid.NewString(), "exp": time.Now().Add(time.Hour).Unix()})
	expired := fakepostgrest.SignJWT(t, secret, map[string]any{"role": "service_role", "exp": time.Now().Add(-time.Hour).Unix()})
	forged := fakepostgrest.SignJWT(t, []byte("another-secret-0123456789abcdef"), map[string]any{"role": "service_role"})
	superuser := fakepostgrest.SignJWT(t, secret, map[string]any{"role": "postgres"})
	ins := func(h map[string]string) map[string]string {
		if h["apikey"] == "" {
			h["apikey"] = sbSec
		}
		return h
	}
	for _, c := range []struct {
		name, method, path, body string
		h                        map[string]string
		status                   int
		code                     string
	}{
		{"no apikey", "GET", "/rest/v1/devices", "", map[string]string{}, 401, "401"},
		{"unknown apikey", "GET", "/rest/v1/devices", "", map[string]string{"apikey": "sb_secret_wrong"}, 401, "401"},
		{"expired JWT", "GET", "/rest/v1/devices", "", ins(map[string]string{"Authorization": "Bearer " + expired}), 401, "PGRST301"},
		{"forged JWT", "GET", "/rest/v1/devices", "", ins(map[string]string{"Authorization": "Bearer " + forged}), 401, "PGRST301"},
		{"sb key as bearer", "GET", "/rest/v1/devices", "", ins(map[string]string{"Authorization": "Bearer " + sbSec}), 401, "PGRST301"},
		{"superuser role", "GET", "/rest/v1/devices", "", ins(map[string]string{"Authorization": "Bearer " + superuser}), 401, "PGRST301"},
		{"unknown table", "GET", "/rest/v1/nope", "", ins(map[string]string{}), 404, "42P01"},
		{"keys differ", "POST", "/rest/v1/devices", `[{"devid":"X1"},{"devid":"X2","name":"n"}]`, ins(map[string]string{}), 400, "PGRST102"},
		{"unknown column", "POST", "/rest/v1/devices", `{"devid":"X1","colour":"red"}`, ins(map[string]string{}), 400, "PGRST204"},
		{"type mismatch", "POST", "/rest/v1/device_config", `{"devid":"D1","heartbeat_interval":"soon"}`, ins(map[string]string{}), 400, "22P02"},
		{"check violation", "POST", "/rest/v1/device_config", `{"devid":"D1","heartbeat_interval":-1}`, ins(map[string]string{}), 400, "23514"},
		{"duplicate", "POST", "/rest/v1/devices", `{"devid":"D1"}`, ins(map[string]string{}), 409, "23505"},
		{"foreign key", "POST", "/rest/v1/device_config", `{"devid":"nobody"}`, ins(map[string]string{}), 409, "23503"},
		{"anon insert", "POST", "/rest/v1/devices", `{"devid":"X3"}`, map[string]string{"apikey": sbPub}, 401, "42501"},
		{"user insert", "POST", "/rest/v1/devices", `{"devid":"X3"}`, ins(map[string]string{"apikey": sbPub, "Authorization": "Bearer " + user}), 403, "42501"},
		{"bad filter value", "GET", "/rest/v1/activity?uplink_id=eq.notauuid", "", ins(map[string]string{}), 400, "22P02"},
		{"bad operator", "GET", "/rest/v1/devices?devid=near.X", "", ins(map[string]string{}), 400, "PGRST100"},
		{"delete without filter", "DELETE", "/rest/v1/devices", "", ins(map[string]string{}), 400, "21000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, body := e.do(c.method, c.path, c.h, c.body)
			var pe struct {
				Code, Message string
				Details, Hint *string
			}
			if err := json.Unmarshal(body, &pe); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if status != c.status || pe.Code != c.code {
				t.Errorf("got %d %s (%s), want %d %s", status, pe.Code, pe.Message, c.status, c.code)
			}
			for _, k := range []string{`"code"`, `"message"`, `"details"`, `"hint"`} {
				if !bytes.Contains(body, []byte(k)) {
					t.Errorf("body %s lacks %s", body, k)
				}
			}
		})
	}
}

// TestRoleFromToken checks RLS through the server: a user sees only their
// devices, anon sees nothing, service_role sees all.
func TestRoleFromToken(t *testing.T) {
	e := start(t)
	alice, bob := uuid.New(), uuid.New()
	e.exec(`insert into auth.users (id) values ($1), ($2)`, alice, bob)
	e.exec(`insert into devices (devid, owner_id) values ('ALICE1', $1), ('BOB1', $2), ('NOBODY', null)`, alice, bob)
	tok := fakepostgrest.SignJWT(t, secret, map[string]any{"role": "authenticated", "sub": alice.String(), "exp": time.Now().Add(time.Hour).Unix()})
	legacyService := fakepostgrest.SignJWT(t, secret, map[string]any{"role": "service_role"})
	for _, c := range []struct {
		name string
		h    map[string]string
		want string
	}{
		{"alice", map[string]string{"apikey": sbPub, "Authorization": "Bearer " + tok}, `[{"devid":"ALICE1"}]`},
		{"anon", map[string]string{"apikey": sbPub}, `[]`},
		{"sb_secret", map[string]string{"apikey": sbSec}, `[{"devid":"ALICE1"},{"devid":"BOB1"},{"devid":"NOBODY"}]`},
		{"legacy service_role JWT", map[string]string{"apikey": legacyService, "Authorization": "Bearer " + legacyService}, `[{"devid":"ALICE1"},{"devid":"BOB1"},{"devid":"NOBODY"}]`},
	} {
		path := "/rest/v1/devices?select=devid&order=devid"
		if c.name == "anon" {
			// anon has no grant on devices at all: PostgREST answers 401.
			status, _ := e.do("GET", path, c.h, "")
			if status != 401 {
				t.Errorf("%s: status %d, want 401", c.name, status)
			}
			continue
		}
		status, body := e.do("GET", path, c.h, "")
		if status != 200 || norm(t, body) != c.want {
			t.Errorf("%s: %d %s, want %s", c.name, status, body, c.want)
		}
	}
}
