package rest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/rest"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
)

var (
	jwtSecret = []byte("rest-test-jwt-secret-0123456789abcdef")
	secretKey = "sb_secret_resttest0123456789"
	opts      = fakepostgrest.Options{JWTSecret: jwtSecret, SecretKey: secretKey, PublishableKey: "sb_publishable_resttest"}
)

func newWriter(t testing.TB, dbURL string) storage.Writer {
	srv := fakepostgrest.Start(t, dbURL, opts)
	w, err := rest.New(srv.URL, secretKey, rest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestSuite runs the behavioural suite shared with the Postgres writer,
// through the PostgREST stand-in on the real migrated database.
func TestSuite(t *testing.T) { storagetest.Run(t, newWriter) }

// An error answer's message goes into the error, which is logged: a proxy
// or a misbehaving service answering a megabyte made a megabyte log line.
// It is clipped to a few hundred bytes, its code too.
func TestLongErrorMessageIsClipped(t *testing.T) {
	long := strings.Repeat("duplicate key ", 70000) // ~1 MB, under the read bound
	a := &answerAll{status: 409, body: []byte(`{"code":"23505","message":"` + long + `"}`)}
	w, err := rest.New("https://project.supabase.co", secretKey, rest.Options{Transport: a})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Write(context.Background(), oneRecord())
	if err == nil {
		t.Fatal("a 409 answer wrote the batch")
	}
	if n := len(err.Error()); n > maxError {
		t.Fatalf("a %d-byte error (want at most %d): %.120s…", n, maxError, err)
	}
	if !strings.Contains(err.Error(), "HTTP 409 23505: duplicate key duplicate key") || !strings.HasSuffix(err.Error(), "…") {
		t.Fatalf("error %.200q: want the code and the start of the message, marked clipped", err)
	}
}
