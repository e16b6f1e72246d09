package access_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

const (
	owner    = "11111111-1111-1111-1111-111111111111"
	stranger = "22222222-2222-2222-2222-222222222222"
	secret   = "rest-secret-0123456789abcdef-0123456789"
)

// seededDB is a migrated database where owner owns DEV-1 and DEV-2 has no owner.
func seededDB(t *testing.T) string {
	db := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		"insert into auth.users (id) values ('" + owner + "'), ('" + stranger + "')",
		"insert into public.devices (devid, owner_id) values ('DEV-1', '" + owner + "'), ('DEV-2', null)",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return db
}

func userClaims(sub string) *auth.Claims {
	return &auth.Claims{Subject: sub, Role: "authenticated", Raw: map[string]any{
		"sub": sub, "role": "authenticated", "aud": "authenticated", "exp": float64(time.Now().Add(time.Hour).Unix())}}
}

type backendCase struct {
	name   string
	sub    string
	device string
	want   error
}

var backendCases = []backendCase{
	{"owner", owner, "DEV-1", nil},
	{"stranger", stranger, "DEV-1", access.ErrDenied},
	{"unowned device", owner, "DEV-2", access.ErrDenied},
	{"unknown device", owner, "NOPE", access.ErrDenied},
}

// Directly, and through a transaction pooler (Supabase's on port 6543;
// PgBouncer here) across a restart of the relay: with pgx's named
// prepared statements the restarted relay's checks failed there ("already
// exists"), so browsers were refused.
func TestPostgresCheckUsesRLS(t *testing.T) {
	db := seededDB(t)
	for _, via := range []struct{ name, url string }{{"direct", db}, {"transaction pooler", pgtest.Bouncer(t, db)}} {
		t.Run(via.name, func(t *testing.T) {
			for run := range 2 { // the second: a restarted relay
				p, err := access.NewPostgres(context.Background(), via.url, 2)
				if err != nil {
					t.Fatal(err)
				}
				for range 5 {
					for _, tc := range backendCases {
						if err := p.Check(context.Background(), userClaims(tc.sub), "", tc.device); !errors.Is(err, tc.want) {
							t.Errorf("run %d, %s: got %v, want %v", run, tc.name, err, tc.want)
						}
					}
				}
				// The role and claims were local to each check's transaction: a
				// plain query on the pool is the superuser again and sees every
				// device.
				var n int
				if err := p.Pool.QueryRow(context.Background(), "select count(*) from public.devices").Scan(&n); err != nil || n != 2 {
					t.Errorf("pool session leaked role or claims: %d rows, %v", n, err)
				}
				p.Close()
			}
		})
	}
}

func TestRESTCheckUsesUserToken(t *testing.T) {
	const publishable = "sb_publishable_test_0123456789"
	srv := fakepostgrest.Start(t, seededDB(t), fakepostgrest.Options{JWTSecret: []byte(secret), PublishableKey: publishable})
	r := &access.REST{BaseURL: srv.URL, APIKey: publishable, Client: &http.Client{Timeout: 5 * time.Second}}
	for _, tc := range backendCases {
		t.Run(tc.name, func(t *testing.T) {
			c := userClaims(tc.sub)
			tok := fakepostgrest.SignJWT(t, []byte(secret), c.Raw)
			if err := r.Check(context.Background(), c, tok, tc.device); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("token PostgREST refuses", func(t *testing.T) {
		tok := fakepostgrest.SignJWT(t, []byte("other-secret-0123456789abcdef-0123"), userClaims(owner).Raw)
		if err := r.Check(context.Background(), userClaims(owner), tok, "DEV-1"); !errors.Is(err, access.ErrTokenRefused) {
			t.Fatalf("got %v, want ErrTokenRefused", err)
		}
	})
	// A wrong SUPABASE_ANON_KEY: the gateway refuses it before PostgREST
	// reads the user's token. That is the relay's fault, not the user's:
	// unavailable (503, logged), never the token refused (401, which sends
	// every browser to sign in again, in vain).
	t.Run("API key the gateway refuses", func(t *testing.T) {
		wrong := &access.REST{BaseURL: srv.URL, APIKey: "sb_publishable_wrong_0123456789", Client: r.Client}
		tok := fakepostgrest.SignJWT(t, []byte(secret), userClaims(owner).Raw)
		err := wrong.Check(context.Background(), userClaims(owner), tok, "DEV-1")
		if !errors.Is(err, access.ErrUnavailable) || errors.Is(err, access.ErrTokenRefused) || !strings.Contains(err.Error(), "SUPABASE_ANON_KEY") {
			t.Fatalf("check: %v, want unavailable naming SUPABASE_ANON_KEY", err)
		}
		_, err = wrong.Visible(context.Background(), userClaims(owner), tok, []string{"DEV-1"})
		if !errors.Is(err, access.ErrUnavailable) || errors.Is(err, access.ErrTokenRefused) {
			t.Fatalf("visible: %v, want unavailable", err)
		}
	})
}

// TestRESTCheckBackendErrors uses a plain httptest handler standing in for
// a failing gateway (5xx, non-JSON): what fakepostgrest cannot produce.
func TestRESTCheckBackendErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
	}{
		{"5xx", http.StatusBadGateway, "bad gateway"},
		{"not json", http.StatusOK, "<html>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			r := &access.REST{BaseURL: srv.URL, APIKey: "k", Client: srv.Client()}
			if err := r.Check(context.Background(), userClaims(owner), "t", "DEV-1"); !errors.Is(err, access.ErrUnavailable) {
				t.Fatalf("got %v, want ErrUnavailable", err)
			}
		})
	}
}
