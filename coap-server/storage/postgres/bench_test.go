package postgres_test

import (
	"fmt"
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
)

// BenchmarkQueuePostgres: sustained uplinks/s into local Postgres through
// the queue and the direct writer, by batch size and workers
// (go test -bench QueuePostgres -benchtime 100000x).
func BenchmarkQueuePostgres(b *testing.B) {
	for _, o := range []storage.Options{
		{BatchSize: 500, Workers: 2},
		{BatchSize: 2000, Workers: 2},
		{BatchSize: 2000, Workers: 4},
	} {
		b.Run(fmt.Sprintf("batch=%d/workers=%d", o.BatchSize, o.Workers), func(b *testing.B) {
			storagetest.Bench(b, newWriter, o)
		})
	}
}
