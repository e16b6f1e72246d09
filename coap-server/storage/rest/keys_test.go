package rest_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/rest"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

func oneRecord() *storage.Rows {
	rows := storage.RowsOf([]uplink.Accepted{storagetest.Rec("KEY1", time.Now(), storagetest.FullUplink("KEY1", 1))})
	return &rows
}

func TestLegacyServiceRoleJWT(t *testing.T) {
	db := pgtest.NewDB(t)
	srv := fakepostgrest.Start(t, db, opts)
	key := fakepostgrest.SignJWT(t, jwtSecret, map[string]any{"role": "service_role", "iss": "supabase"})
	w, err := rest.New(srv.URL, key, rest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(context.Background(), oneRecord()); err != nil {
		t.Fatal(err)
	}
	if n := storagetest.Connect(t, db).Int(`select count(*) from sensor_data where devid = 'KEY1'`); n != 5 {
		t.Errorf("sensor rows %d, want 5", n)
	}
}

func TestNewRefusesWrongKeys(t *testing.T) {
	anon := fakepostgrest.SignJWT(t, jwtSecret, map[string]any{"role": "anon"})
	for name, key := range map[string]string{
		"publishable": "sb_publishable_abcdef0123456789",
		"anon JWT":    anon,
		"garbage":     "not-a-key-0123456789",
		"empty":       "",
	} {
		_, err := rest.New("https://example.supabase.co", key, rest.Options{})
		if !errors.Is(err, rest.ErrKey) {
			t.Errorf("%s: %v, want ErrKey", name, err)
		}
		if err != nil && key != "" && strings.Contains(err.Error(), key) {
			t.Errorf("%s: the error shows the key", name)
		}
	}
	if _, err := rest.New("ftp://x", "sb_secret_x", rest.Options{}); !errors.Is(err, rest.ErrURL) {
		t.Errorf("bad URL: %v", err)
	}
}

// TestRevokedKeyIsRetried: a key the server refuses is an operator's
// problem, not the rows': the error is retried (uplinks wait), never
// treated as a rejection that would drop them.
func TestRevokedKeyIsRetried(t *testing.T) {
	srv := fakepostgrest.Start(t, pgtest.NewDB(t), opts)
	w, err := rest.New(srv.URL, "sb_secret_revoked000000", rest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Write(context.Background(), oneRecord())
	if err == nil || errors.Is(err, storage.ErrRejected) || !strings.Contains(err.Error(), "401") {
		t.Errorf("write with a revoked key: %v, want a retryable 401", err)
	}
	if strings.Contains(err.Error(), "sb_secret_revoked") {
		t.Error("the error shows the key")
	}
}

// TestGatewayErrorPage: a proxy in front of PostgREST answering 502 with
// HTML (this handler plays that proxy) is a retryable error, and the body
// is read and closed by the writer's transport.
func TestGatewayErrorPage(t *testing.T) {
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("<html><body>502 Bad Gateway</body></html>"))
	}))
	defer proxy.Close()
	w, err := rest.New(proxy.URL, "sb_secret_x0123456789", rest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Write(context.Background(), oneRecord())
	if err == nil || errors.Is(err, storage.ErrRejected) || !strings.Contains(err.Error(), "502") {
		t.Errorf("write through a failing gateway: %v, want a retryable 502", err)
	}
}

// TestContextBoundsWrite: postgrest-go takes no context; the writer's
// transport must still end a hung request when the context ends.
func TestContextBoundsWrite(t *testing.T) {
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hung.Close()
	defer close(release)
	w, err := rest.New(hung.URL, "sb_secret_x0123456789", rest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Write(ctx, oneRecord()) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("write: %v, want deadline exceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write ignored its context")
	}
}
