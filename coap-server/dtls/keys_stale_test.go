package dtls

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// flakyLoader is a KeyLoader and BatchLoader over a map that can be made
// to fail, as a database that went away.
type flakyLoader struct {
	mu   sync.Mutex
	keys map[string][]byte
	down bool
}

var errDown = errors.New("connection refused")

func (f *flakyLoader) LoadPSK(_ context.Context, id string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errDown
	}
	if k, ok := f.keys[id]; ok {
		return k, nil
	}
	return nil, ErrUnknownDevice
}

func (f *flakyLoader) LoadPSKs(_ context.Context, ids []string) (map[string][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errDown
	}
	out := map[string][]byte{}
	for _, id := range ids {
		if k, ok := f.keys[id]; ok {
			out[id] = k
		}
	}
	return out, nil
}

func (f *flakyLoader) set(fn func()) { f.mu.Lock(); fn(); f.mu.Unlock() }

func TestKeyCacheServesStaleKeysWhileTheDatabaseIsDown(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	m := NewMetrics(prometheus.NewRegistry())
	l := &flakyLoader{keys: map[string][]byte{"a": []byte("key-a")}}
	k := NewKeyCache(l, KeyCacheConfig{TTL: time.Minute, Now: c.Now}, m, nil)
	ctx := context.Background()
	if _, err := k.PSK(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	l.set(func() { l.down = true })
	c.Add(time.Hour) // long expired
	if key, err := k.PSK(ctx, "a"); err != nil || string(key) != "key-a" {
		t.Fatalf("PSK(a) with the database down = %q, %v; want the stale key", key, err)
	}
	if err := k.Refresh(ctx); err == nil {
		t.Fatal("Refresh with the database down: no error")
	}
	if key, err := k.PSK(ctx, "a"); err != nil || string(key) != "key-a" {
		t.Fatalf("PSK(a) after a failed refresh = %q, %v", key, err)
	}
	if got := testutil.ToFloat64(m.KeyLookups.WithLabelValues("stale")); got != 2 {
		t.Errorf("stale lookups = %v, want 2", got)
	}
	// A device never seen cannot be served: it fails, and is not cached as unknown.
	if _, err := k.PSK(ctx, "never-seen"); err == nil || errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("PSK(never-seen) with the database down: %v, want a lookup error", err)
	}
}

func TestKeyCacheJunkCannotEvictKnownKeys(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	l := &flakyLoader{keys: map[string][]byte{}}
	for i := range 10 {
		l.keys[fmt.Sprint("dev", i)] = []byte(fmt.Sprint("key", i))
	}
	k := NewKeyCache(l, KeyCacheConfig{MaxEntries: 10, MaxNegative: 5}, m, nil)
	ctx := context.Background()
	for i := range 10 {
		if _, err := k.PSK(ctx, fmt.Sprint("dev", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 1000 {
		if _, err := k.PSK(ctx, fmt.Sprint("junk", i)); !errors.Is(err, ErrUnknownDevice) {
			t.Fatalf("junk %d: %v", i, err)
		}
	}
	if n := k.Known(); n != 10 {
		t.Fatalf("%d known keys after 1000 junk identities, want 10", n)
	}
	if n := k.Len(); n != 15 {
		t.Errorf("%d entries, want 10 known + 5 unknown", n)
	}
	if got := testutil.ToFloat64(m.NegativeEvictions); got != 995 {
		t.Errorf("negative evictions = %v, want 995", got)
	}
	if got := testutil.ToFloat64(m.KeyCacheEvictions); got != 0 {
		t.Errorf("known-key evictions = %v, want 0", got)
	}
}

func TestKeyCacheRefreshSeesDeletedAndReplacedKeys(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	l := &flakyLoader{keys: map[string][]byte{"a": []byte("key-a"), "b": []byte("key-b"), "c": []byte("key-c")}}
	k := NewKeyCache(l, KeyCacheConfig{}, m, nil)
	var changed []string
	k.OnChange(func(id string) { changed = append(changed, id) })
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		if _, err := k.PSK(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	l.set(func() { delete(l.keys, "a"); l.keys["b"] = []byte("key-b2") })
	if err := k.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if len(changed) != 2 || !(changed[0] == "a" && changed[1] == "b" || changed[0] == "b" && changed[1] == "a") {
		t.Fatalf("OnChange got %v, want a and b", changed)
	}
	if _, err := k.PSK(ctx, "a"); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("deleted key: %v, want ErrUnknownDevice at once", err)
	}
	if key, _ := k.PSK(ctx, "b"); string(key) != "key-b2" {
		t.Errorf("replaced key = %q, want key-b2", key)
	}
	if key, _ := k.PSK(ctx, "c"); string(key) != "key-c" {
		t.Errorf("unchanged key = %q", key)
	}
	if got := testutil.ToFloat64(m.KeyChanges.WithLabelValues("deleted")); got != 1 {
		t.Errorf("deleted changes = %v", got)
	}
}
