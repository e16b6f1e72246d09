package dtls

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// mapLoader is a KeyLoader over a map that counts its calls: enough to test
// the cache's bookkeeping; PGKeys against the real schema is exercised by
// the server tests.
type mapLoader struct {
	keys  map[string][]byte
	calls atomic.Int64
	block chan struct{} // when set, loads wait on it
}

func (m *mapLoader) LoadPSK(ctx context.Context, id string) ([]byte, error) {
	m.calls.Add(1)
	if m.block != nil {
		select {
		case <-m.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if k, ok := m.keys[id]; ok {
		return k, nil
	}
	return nil, ErrUnknownDevice
}

func TestKeyCache(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	m := NewMetrics(prometheus.NewRegistry())
	l := &mapLoader{keys: map[string][]byte{"a": []byte("key-a"), "b": []byte("key-b")}}
	k := NewKeyCache(l, KeyCacheConfig{MaxEntries: 2, TTL: time.Minute, NegativeTTL: 10 * time.Second, Now: c.Now}, m, nil)
	ctx := context.Background()

	for range 3 {
		if key, err := k.PSK(ctx, "a"); err != nil || string(key) != "key-a" {
			t.Fatalf("PSK(a) = %q, %v", key, err)
		}
	}
	if n := l.calls.Load(); n != 1 {
		t.Fatalf("%d loads for one known device, want 1", n)
	}
	for range 3 {
		if _, err := k.PSK(ctx, "junk"); !errors.Is(err, ErrUnknownDevice) {
			t.Fatalf("PSK(junk) err = %v", err)
		}
	}
	if n := l.calls.Load(); n != 2 {
		t.Fatalf("%d loads after 3 junk lookups, want 2 (negative cache)", n)
	}
	c.Add(11 * time.Second) // negative entry expired: the device may have been provisioned since
	l.keys["junk"] = []byte("now-known")
	if key, err := k.PSK(ctx, "junk"); err != nil || string(key) != "now-known" {
		t.Fatalf("PSK(junk) after provisioning = %q, %v", key, err)
	}
	// Full (a, junk): b evicts one entry, and the size stays bounded.
	if _, err := k.PSK(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if k.Len() != 2 || testutil.ToFloat64(m.KeyCacheEvictions) != 1 {
		t.Fatalf("len %d evictions %v, want 2 and 1", k.Len(), testutil.ToFloat64(m.KeyCacheEvictions))
	}
	c.Add(2 * time.Minute) // TTL: known keys are read again (rotation)
	before := l.calls.Load()
	_, _ = k.PSK(ctx, "b")
	if l.calls.Load() != before+1 {
		t.Fatal("expired key not reloaded")
	}
}

func TestKeyCacheBoundsConcurrentLookups(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	l := &mapLoader{keys: map[string][]byte{}, block: make(chan struct{})}
	k := NewKeyCache(l, KeyCacheConfig{MaxConcurrentLookups: 2}, m, nil)
	errs := make(chan error, 2)
	for i := range 2 {
		go func() { _, err := k.PSK(context.Background(), fmt.Sprint("slow", i)); errs <- err }()
	}
	testwait.For(t, "both lookups to start", func() bool { return l.calls.Load() >= 2 }, testwait.Within(5*time.Second))
	if _, err := k.PSK(context.Background(), "third"); !errors.Is(err, ErrKeyStoreBusy) {
		t.Fatalf("third concurrent lookup: %v, want ErrKeyStoreBusy", err)
	}
	close(l.block)
	for range 2 {
		<-errs
	}
	if got := testutil.ToFloat64(m.KeyLookups.WithLabelValues("busy")); got != 1 {
		t.Errorf("busy lookups = %v", got)
	}
}
