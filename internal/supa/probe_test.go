package supa

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// The start's probe of SUPABASE_URL with a key tells a key the gateway
// refuses (ErrKeyRefused: the configuration is wrong) from a project that
// does not answer, and takes any answer past the gateway for the key
// accepted, PostgREST's refusal of an anon select included.
func TestProbeKey(t *testing.T) {
	const (
		secret      = "sb_secret_probe_0123456789"
		publishable = "sb_publishable_probe_0123456789"
	)
	srv := fakepostgrest.Start(t, pgtest.NewDB(t), fakepostgrest.Options{
		JWTSecret: []byte("probe-jwt-secret-0123456789abcdef-0123"), SecretKey: secret, PublishableKey: publishable})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for key, want := range map[string]error{secret: nil, publishable: nil, "sb_secret_wrong_0123456789": ErrKeyRefused, "": ErrKeyRefused} {
		err := ProbeKey(ctx, RESTClient(), srv.URL, key, "devices")
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Errorf("key %q: %v, want %v", key, err, want)
		}
		if err != nil && key != "" && strings.Contains(err.Error(), key) {
			t.Errorf("the error quotes the key: %v", err)
		}
	}
	gone := httptest.NewServer(nil)
	gone.Close()
	if err := ProbeKey(ctx, RESTClient(), gone.URL, secret, "devices"); err == nil || errors.Is(err, ErrKeyRefused) {
		t.Errorf("nothing there: %v, want an error other than ErrKeyRefused", err)
	}
}
