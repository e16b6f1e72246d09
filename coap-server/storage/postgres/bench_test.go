package postgres_test

import (
	"fmt"
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
)

// BenchmarkQueuePostgres: the catch-up rate, uplinks/s into local Postgres
// from a backlog in the UPLINKS stream (what a database outage leaves) through
// the consumer and the direct writer, by batch size and workers. A 60 s
// outage at 1,000 uplinks/s is -benchtime 60000x.
//
//	go test -run '^$' -bench QueuePostgres -benchtime 60000x ./coap-server/storage/postgres
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
