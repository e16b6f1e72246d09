package downlink_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// BenchmarkRESTFullReload measures what REST mode's periodic full reload
// (once a minute by default) costs: 5,000 devices with a pending downlink,
// read in pages of Supabase's default 1,000 rows through the PostgREST
// stand-in on the real schema. The stand-in is not PostgREST (its JSON is
// built by Postgres the same way, but its HTTP side is Go's), so the
// figure is an order of magnitude, not a production latency.
func BenchmarkRESTFullReload(b *testing.B) {
	const devices = 5000
	ctx := context.Background()
	db := pgtest.NewDB(b)
	srv := fakepostgrest.Start(b, db, fakepostgrest.Options{SecretKey: restSecretKey, MaxRows: 1000})
	pool, err := pgxpool.New(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `insert into public.devices (devid) select 'bench-' || i from generate_series(1, $1::int) i`, devices); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `insert into public.device_downlinks (devid, config)
		select 'bench-' || i, '{"heartbeat_interval": 3600, "gnss_interval": 0}' from generate_series(1, $1::int) i`, devices); err != nil {
		b.Fatal(err)
	}
	r := &downlink.REST{BaseURL: srv.URL, ServiceKey: restSecretKey, Client: supa.RESTClient()}
	for b.Loop() {
		rows := 0
		if err := r.Pending(ctx, func(downlink.Row) { rows++ }); err != nil {
			b.Fatal(err)
		}
		if rows != devices {
			b.Fatalf("%d rows, want %d", rows, devices)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/devices, "µs/device")
}
