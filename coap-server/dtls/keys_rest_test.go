package dtls_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/supa"
)

var (
	keysJWTSecret   = []byte("dtls-keys-rest-test-jwt-secret-0123")
	keysSecretKey   = "sb_secret_dtlskeysresttest0123"
	keysPublishable = "sb_publishable_dtlskeysresttest0123"
)

// restKeysEnv is device_credentials behind the PostgREST stand-in on a real
// migrated database (RLS on, no user policy, service_role grants).
func restKeysEnv(t *testing.T) (url string, pool *pgxpool.Pool) {
	t.Helper()
	db := pgtest.NewDB(t)
	srv := fakepostgrest.Start(t, db, fakepostgrest.Options{
		JWTSecret: keysJWTSecret, SecretKey: keysSecretKey, PublishableKey: keysPublishable})
	pool, err := pgxpool.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return srv.URL, pool
}

// TestRESTKeysLoadPSK reads keys the way SUPABASE_URL mode does, with both
// kinds of service key. The PSK holds the bytes a hand-rolled encoding gets
// wrong (NUL, backslash, 0xff): PostgREST sends a bytea as "\x…" hex text.
func TestRESTKeysLoadPSK(t *testing.T) {
	url, pool := restKeysEnv(t)
	psk := []byte{0x00, '\\', 'x', 0xff, 0x7f, 0x80, '"', 0x0a, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	if _, err := pool.Exec(context.Background(), `insert into public.devices (devid) values ('rest-key-dev')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), `insert into public.device_credentials (devid, psk) values ('rest-key-dev', $1)`, psk); err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]string{
		"sb_secret":        keysSecretKey,
		"service_role_jwt": fakepostgrest.SignJWT(t, keysJWTSecret, map[string]any{"role": "service_role"}),
	} {
		t.Run(name, func(t *testing.T) {
			r := dtls.RESTKeys{BaseURL: url, ServiceKey: key, Client: supa.RESTClient()}
			got, err := r.LoadPSK(context.Background(), "rest-key-dev")
			if err != nil || !bytes.Equal(got, psk) {
				t.Fatalf("LoadPSK = %x, %v; want %x", got, err, psk)
			}
			if _, err := r.LoadPSK(context.Background(), "rest-no-such-dev"); !errors.Is(err, dtls.ErrUnknownDevice) {
				t.Fatalf("unknown device: %v, want ErrUnknownDevice", err)
			}
			// An identity that is a filter expression elsewhere is only a
			// value here (query-encoded after eq.).
			if _, err := r.LoadPSK(context.Background(), "rest-key-dev&devid=neq.x"); !errors.Is(err, dtls.ErrUnknownDevice) {
				t.Fatalf("identity with query syntax: %v, want ErrUnknownDevice", err)
			}
		})
	}
}

// TestRESTKeysRefusedKeyIsNotUnknown: with a key that may not read
// device_credentials (the publishable key, i.e. anon), lookups fail with an
// error that neither names the key nor passes for "unknown device", so the
// cache does not remember every device as unknown for NegativeTTL.
func TestRESTKeysRefusedKeyIsNotUnknown(t *testing.T) {
	url, pool := restKeysEnv(t)
	if _, err := pool.Exec(context.Background(), `insert into public.devices (devid) values ('rest-anon-dev')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), `insert into public.device_credentials (devid, psk) values ('rest-anon-dev', $1)`, bytes.Repeat([]byte{7}, 16)); err != nil {
		t.Fatal(err)
	}
	m := dtls.NewMetrics(prometheus.NewRegistry())
	cache := dtls.NewKeyCache(dtls.RESTKeys{BaseURL: url, ServiceKey: keysPublishable, Client: supa.RESTClient()},
		dtls.KeyCacheConfig{}, m, discard)
	for range 2 {
		_, err := cache.PSK(context.Background(), "rest-anon-dev")
		if err == nil || errors.Is(err, dtls.ErrUnknownDevice) || !strings.Contains(err.Error(), "HTTP 401") {
			t.Fatalf("anon lookup: %v, want an HTTP 401 error, not unknown", err)
		}
		if strings.Contains(err.Error(), keysPublishable) {
			t.Fatalf("error names the key: %v", err)
		}
	}
	if n := cache.Len(); n != 0 {
		t.Errorf("%d entries cached after failed lookups, want 0", n)
	}
	if got := testutil.ToFloat64(m.KeyLookups.WithLabelValues("error")); got != 2 {
		t.Errorf("error lookups = %v, want 2 (each retried, none cached)", got)
	}
}
