package rest_test

import (
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
)

// BenchmarkQueueREST: sustained uplinks/s through the queue, the REST
// writer and the PostgREST stand-in (which adds JSON parsing and
// json_populate_recordset, as PostgREST does) into local Postgres.
func BenchmarkQueueREST(b *testing.B) {
	storagetest.Bench(b, newWriter, storage.Options{})
}
