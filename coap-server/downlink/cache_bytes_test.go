package downlink

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/memlimit"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// What an entry is charged (entryOverhead, configOverhead and the bytes it
// holds) must be what it costs on the heap, or the byte bound on the cache
// does not bound its memory: a hundred thousand entries of each kind, each
// row built inside the measured loop (its device ID then lives only in the
// cache, as a row read from the database does).
func TestCacheBytesMatchTheHeap(t *testing.T) {
	const n = 100_000
	long := strings.Repeat("v", 64)
	for _, tc := range []struct {
		name   string
		config string // with %d: the row's own value
		done   bool
	}{
		{"typical", `{"heartbeat_interval": %d, "gnss_interval": 0}`, false},
		{"largest", `{"heartbeat_interval": %d, "gnss_interval": 1, "wifi_scan_interval": 2, "hw_version": "` + long + `", "fw_version": "` + long + `"}`, false},
		{"tombstone", `{"heartbeat_interval": %d}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCache(1<<40, nil, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for i := range n {
				c.Put(Row{ID: int64(i + 1), DeviceID: fmt.Sprintf("SIM-%06d", i), Config: fmt.Appendf(nil, tc.config, 60+i), Done: tc.done})
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			c.mu.Lock()
			charged, held := c.bytes, len(c.devices)
			c.mu.Unlock()
			if held != n {
				t.Fatalf("%d entries held, want %d", held, n)
			}
			t.Logf("%s: heap %d B (%.0f B each), charged %d B (%.0f B each)", tc.name, heap, float64(heap)/n, charged, float64(charged)/n)
			if heap > charged*5/4 || heap < charged*3/4 {
				t.Errorf("heap %d B for %d B charged: entryOverhead or configOverhead is off", heap, charged)
			}
			runtime.KeepAlive(c)
		})
	}
}

// The cache is bounded in bytes, by default a share of the process memory.
// At the bound, tombstones and applied entries make room; when none is
// left, a new row is dropped (cache_full) and held by a later Put that
// finds room, and a newer row of a device held replaces it even when it
// does not fit (by a tombstone), so the older row is not sent meanwhile.
func TestCacheBoundInBytes(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	s := New(nopStore{}, Config{Metrics: m})
	defer s.Close(context.Background())
	if s.max != DefaultCacheBytes() || s.max != memlimit.Bytes()/32 {
		t.Errorf("default bound %d B, want DefaultCacheBytes = memlimit.Bytes()/32 = %d B", s.max, memlimit.Bytes()/32)
	}
	row := func(id int64, dev string) Row {
		return Row{ID: id, DeviceID: dev, Config: []byte(`{"heartbeat_interval": 600}`)}
	}
	one, _ := entry(row(1, "dev-a"))
	st := NewStamper(nopStore{}, StamperConfig{}, m, slog.New(slog.DiscardHandler), func(int64, string, bool) {})
	defer st.Close(context.Background())
	c := NewCache(2*one.bytes, st, m, slog.New(slog.DiscardHandler))
	full := func() float64 { return testutil.ToFloat64(m.Dropped.WithLabelValues("cache_full")) }

	c.Put(row(1, "dev-a"))
	c.Put(Row{ID: 2, DeviceID: "dev-b", Config: []byte(`{"heartbeat_interval": -1}`)}) // a tombstone
	c.Put(row(3, "dev-c"))
	if !c.Holds("dev-a", 1) || !c.Holds("dev-c", 3) || c.Holds("dev-b", 2) || full() != 0 {
		t.Fatalf("a %v, c %v, b's tombstone %v, cache_full %v: want the tombstone evicted for c", c.Holds("dev-a", 1), c.Holds("dev-c", 3), c.Holds("dev-b", 2), full())
	}
	c.Put(row(4, "dev-d"))
	if c.Holds("dev-d", 4) || full() != 1 {
		t.Fatalf("d held %v, cache_full %v: want d dropped and counted (nothing evictable)", c.Holds("dev-d", 4), full())
	}
	c.ForUplink(uplink.Accepted{DeviceID: "dev-a", Uplink: &nbiotv1.Uplink{Config: &nbiotv1.DeviceConfig{ConfigVersion: proto.Uint32(1)}}})
	c.Put(row(4, "dev-d")) // the next reload
	if !c.Holds("dev-d", 4) || c.Holds("dev-a", 1) {
		t.Fatalf("d held %v, a held %v: want a (applied) evicted for d", c.Holds("dev-d", 4), c.Holds("dev-a", 1))
	}
	big := Row{ID: 5, DeviceID: "dev-c", Config: []byte(`{"heartbeat_interval": 1, "fw_version": "` + strings.Repeat("v", 64) + `"}`)}
	c.Put(big)
	if p, _, _ := c.ForUplink(uplink.Accepted{DeviceID: "dev-c", Uplink: &nbiotv1.Uplink{}}); len(p) != 0 || !c.Holds("dev-c", 5) || full() != 2 {
		t.Fatalf("c's row 5 does not fit: sent %d B, tombstone held %v, cache_full %v; want nothing sent, the tombstone, 2", len(p), c.Holds("dev-c", 5), full())
	}
	if c.bytes > c.max {
		t.Errorf("%d B held, bound %d B", c.bytes, c.max)
	}
}

// nopStore writes stamps nowhere.
type nopStore struct{ Store }

func (nopStore) MarkSent(context.Context, int64, string, time.Time) error { return nil }
func (nopStore) MarkApplied(context.Context, int64, time.Time) error      { return nil }
