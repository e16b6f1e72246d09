package rest_test

import (
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
