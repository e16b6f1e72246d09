package downlink_test

import (
	"context"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
)

// firstRecord is a slog handler that measures the live heap when the
// first record arrives, and discards every record.
type firstRecord struct {
	once sync.Once
	heap int64
}

func (h *firstRecord) Enabled(context.Context, slog.Level) bool { return true }
func (h *firstRecord) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *firstRecord) WithGroup(string) slog.Handler            { return h }
func (h *firstRecord) Handle(context.Context, slog.Record) error {
	h.once.Do(func() { h.heap = liveHeap() })
	return nil
}

func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// A load hands rows to the cache as it reads them: users' rows (up to a
// KiB of config each) are never all held at once. When the cache gets the
// first of 20,000 rows of 1 KiB, the heap holds at most a page of them
// (REST: 1,000 rows, a MB as JSON and as much decoded; 3.3 MB measured),
// not the 20 MB and more that collecting them takes. The
// rows' configs are refused (a 1,000-byte fw_version), so the cache logs
// each one: the first log record is the first row reaching the cache.
func TestLoadStreamsRowsIntoTheCache(t *testing.T) {
	const rows = 20_000
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db, pool := newDB(t)
	for _, q := range []string{
		`insert into public.devices (devid) select 'big-' || i from generate_series(1, $1::int) i`,
		`insert into public.device_downlinks (devid, config)
		 select 'big-' || i, jsonb_build_object('fw_version', repeat('v', 1000)) from generate_series(1, $1::int) i`,
	} {
		if _, err := pool.Exec(ctx, q, rows); err != nil {
			t.Fatal(err)
		}
	}
	srv := fakepostgrest.Start(t, db, fakepostgrest.Options{SecretKey: restSecretKey})
	for name, store := range map[string]downlink.Store{
		"postgres": downlink.PG{Pool: pool},
		"rest":     &downlink.REST{BaseURL: srv.URL, ServiceKey: restSecretKey, Client: &http.Client{Timeout: 30 * time.Second}},
	} {
		t.Run(name, func(t *testing.T) {
			log := &firstRecord{}
			m := downlink.NewMetrics(prometheus.NewRegistry())
			s := downlink.New(store, downlink.Config{Metrics: m, Logger: slog.New(log)})
			t.Cleanup(func() { closeService(t, s) })
			before := liveHeap()
			if err := s.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if got := testutil.ToFloat64(m.Dropped.WithLabelValues("invalid_config")); got != rows {
				t.Fatalf("%v rows reached the cache, want %d", got, rows)
			}
			grown := log.heap - before
			t.Logf("heap at the first row put: %d B above the heap before the load", grown)
			if grown > 8<<20 {
				t.Errorf("when the first row reached the cache the heap had grown by %d B: the load collects rows before putting them", grown)
			}
		})
	}
}
