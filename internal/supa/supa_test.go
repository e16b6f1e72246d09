package supa

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func jwt(role string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc([]byte(`{"role":"`+role+`"}`)) + ".sig"
}

func TestKeyHeaders(t *testing.T) {
	tests := []struct {
		name, key  string
		kind       Kind
		service    bool // CheckServiceKey accepts it
		bearerSelf bool // SetKey sends the key as Authorization: Bearer
	}{
		{"secret key", "sb_secret_abc", KindSecret, true, false},
		{"publishable key", "sb_publishable_abc", KindPublishable, false, false},
		{"legacy service_role JWT", jwt("service_role"), KindLegacyJWT, true, true},
		{"legacy anon JWT", jwt("anon"), KindLegacyJWT, false, true},
		{"garbage", "not-a-key", KindUnknown, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := KindOf(tt.key); got != tt.kind {
				t.Errorf("KindOf = %v, want %v", got, tt.kind)
			}
			err := CheckServiceKey(tt.key)
			if (err == nil) != tt.service || (err != nil && !errors.Is(err, ErrServiceKey)) {
				t.Errorf("CheckServiceKey = %v, want accepted=%v", err, tt.service)
			}
			if err != nil && strings.Contains(err.Error(), tt.key) {
				t.Errorf("error %q contains the key", err)
			}
			h := http.Header{}
			SetKey(h, tt.key)
			if h.Get("apikey") != tt.key {
				t.Errorf("apikey = %q", h.Get("apikey"))
			}
			if got := h.Get("Authorization") == "Bearer "+tt.key; got != tt.bearerSelf {
				t.Errorf("Authorization = %q, want the key as Bearer: %v", h.Get("Authorization"), tt.bearerSelf)
			}
			m := Headers(tt.key)
			if m["apikey"] != tt.key || (m["Authorization"] != "") != tt.bearerSelf {
				t.Errorf("Headers = %v", m)
			}
			SetUserToken(h, tt.key, "user.jwt.token")
			if h.Get("apikey") != tt.key || h.Get("Authorization") != "Bearer user.jwt.token" {
				t.Errorf("SetUserToken: apikey %q, Authorization %q", h.Get("apikey"), h.Get("Authorization"))
			}
		})
	}
}

func TestNewPool(t *testing.T) {
	ctx := context.Background()
	_, err := NewPool(ctx, "postgres://u:s3cret@[bad/db?sslmode=disable", PoolOptions{})
	if !errors.Is(err, ErrDatabaseURL) || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad URL: %v", err)
	}
	// Nothing listens there: the pool must not connect until used.
	p, err := NewPool(ctx, "postgres://u:p@127.0.0.1:1/db?connect_timeout=2", PoolOptions{AppName: "supa-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := p.Config()
	if c.MaxConns != 4 || c.ConnConfig.ConnectTimeout != 2*time.Second || c.ConnConfig.RuntimeParams["application_name"] != "supa-test" {
		t.Errorf("max %d, connect timeout %v, app %q", c.MaxConns, c.ConnConfig.ConnectTimeout, c.ConnConfig.RuntimeParams["application_name"])
	}
	p2, err := NewPool(ctx, "postgres://u:p@127.0.0.1:1/db", PoolOptions{MaxConns: 2, ConnectTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if c := p2.Config(); c.MaxConns != 2 || c.ConnConfig.ConnectTimeout != time.Second {
		t.Errorf("max %d, connect timeout %v", c.MaxConns, c.ConnConfig.ConnectTimeout)
	}
}

// RESTClient keeps the connections of 8 requests at once for the next 8:
// the second round opens none. With Go's default of 2 idle connections
// per host it opened 6 again, each a TLS handshake with Supabase.
func TestRESTClientKeepsItsConnections(t *testing.T) {
	var opened atomic.Int32
	release := make(chan struct{})
	var inside sync.WaitGroup
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inside.Done()
		<-release
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := RESTClient()
	round := func() {
		inside.Add(8)
		var done sync.WaitGroup
		for range 8 {
			done.Go(func() {
				resp, err := c.Get(srv.URL)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}
		inside.Wait() // all 8 at once: 8 connections
		for range 8 {
			release <- struct{}{}
		}
		done.Wait()
	}
	round()
	if n := opened.Load(); n != 8 {
		t.Fatalf("%d connections for 8 requests at once, want 8", n)
	}
	// A connection goes back to the pool just after its body is read, so
	// a round may start before the last is back: the fewest new ones in
	// three rounds is the pool's measure.
	fewest := int32(8)
	for range 3 {
		before := opened.Load()
		round()
		fewest = min(fewest, opened.Load()-before)
	}
	if fewest != 0 {
		t.Fatalf("rounds of 8 requests at once opened at least %d new connections each, want 0", fewest)
	}
}
