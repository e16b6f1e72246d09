package postgres_test

import (
	"context"
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/postgres"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
)

func newWriter(t testing.TB, dbURL string) storage.Writer {
	w, err := postgres.New(context.Background(), dbURL, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w
}

// TestSuite runs the behavioural suite shared with the REST writer.
func TestSuite(t *testing.T) { storagetest.Run(t, newWriter) }
