package dtls

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// heldBatch is a flakyLoader whose batch queries wait for release (or
// their context), counting how many are in flight at once: a REST round
// trip that lasts as long as the test wants.
type heldBatch struct {
	flakyLoader
	release chan struct{}

	failFirst bool // the first query fails, as if the database were down

	mu             sync.Mutex
	inFlight, peak int
	queries        int
}

func (h *heldBatch) LoadPSKs(ctx context.Context, ids []string) (map[string][]byte, error) {
	h.mu.Lock()
	h.queries++
	first := h.queries == 1
	h.inFlight++
	h.peak = max(h.peak, h.inFlight)
	h.mu.Unlock()
	defer func() { h.mu.Lock(); h.inFlight--; h.mu.Unlock() }()
	if first && h.failFirst {
		return nil, errDown
	}
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return h.flakyLoader.LoadPSKs(ctx, ids)
}

func (h *heldBatch) state() (inFlight, peak, queries int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.inFlight, h.peak, h.queries
}

// cachedKeys returns a cache over h holding n known keys.
func cachedKeys(t *testing.T, h *heldBatch, n int) (*KeyCache, *Metrics) {
	t.Helper()
	h.keys = make(map[string][]byte, n)
	for i := range n {
		h.keys[fmt.Sprintf("dev-%05d", i)] = []byte("0123456789abcdef")
	}
	m := NewMetrics(prometheus.NewRegistry())
	k := NewKeyCache(h, KeyCacheConfig{LookupTimeout: time.Minute}, m, nil)
	for i := range n {
		if _, err := k.PSK(context.Background(), fmt.Sprintf("dev-%05d", i)); err != nil {
			t.Fatal(err)
		}
	}
	return k, m
}

// Refresh used to send its queries one after another, so over REST a pass
// took a round trip per 100 cached keys (3 s for 10,000 keys at 30 ms,
// past the 2 s the README promised). Its queries now overlap, at most
// refreshParallel at a time.
func TestRefreshQueriesOverlapUpToTheirBound(t *testing.T) {
	h := &heldBatch{release: make(chan struct{})}
	k, _ := cachedKeys(t, h, 20*refreshChunk)
	release := sync.OnceFunc(func() { close(h.release) })
	t.Cleanup(release) // a failed wait leaves no query blocked
	refreshed := make(chan error, 1)
	go func() { refreshed <- k.Refresh(context.Background()) }()
	testwait.ForState(t, fmt.Sprintf("%d queries in flight at once", refreshParallel), func() (bool, string) {
		n, _, _ := h.state()
		return n == refreshParallel, fmt.Sprintf("%d in flight", n)
	}, testwait.Within(5*time.Second))
	release()
	if err := <-refreshed; err != nil {
		t.Fatal(err)
	}
	if _, peak, queries := h.state(); peak != refreshParallel || queries != 20 {
		t.Errorf("peak %d queries in flight over %d queries; want %d over 20", peak, queries, refreshParallel)
	}
}

// A failed query used to end the pass: the identities of the queries after
// it were not re-read, so a deletion among them waited for a pass in which
// every query worked. Now only the failed query's keys stay as they were.
func TestRefreshGoesOnPastAFailedQuery(t *testing.T) {
	h := &heldBatch{release: make(chan struct{}), failFirst: true}
	close(h.release)
	k, m := cachedKeys(t, h, 10*refreshChunk)
	h.set(func() { clear(h.keys) }) // every credential deleted
	err := k.Refresh(context.Background())
	if n := k.Known(); n != refreshChunk {
		t.Errorf("%d keys still known, want the failed query's %d", n, refreshChunk)
	}
	if got := testutil.ToFloat64(m.KeyChanges.WithLabelValues("deleted")); got != 9*refreshChunk {
		t.Errorf("deletions seen = %v, want %d", got, 9*refreshChunk)
	}
	if !errors.Is(err, errDown) || !strings.Contains(err.Error(), "1 of 10 queries failed") {
		t.Errorf("Refresh: %v; want errDown, 1 of 10 queries failed", err)
	}
}

// serialBatch is a heldBatch whose loader asks for one query at a time,
// as PGKeys does.
type serialBatch struct{ *heldBatch }

func (serialBatch) RefreshParallel() int { return 1 }

// Over Postgres, Refresh's queries share the key pool with the handshakes'
// lookups: a loader that asks for it (PGKeys) gets one query at a time, and
// two Refreshes asked together (the periodic one, a LISTEN's reconnection)
// do not overlap. Before, a pass over 600 cached keys could hold every
// connection of the pool while an uncached device's lookup waited. (Found
// in a review.)
func TestRefreshOverPostgresHoldsOneConnection(t *testing.T) {
	h := &heldBatch{release: make(chan struct{})}
	h.keys = make(map[string][]byte, 6*refreshChunk)
	for i := range 6 * refreshChunk {
		h.keys[fmt.Sprintf("dev-%05d", i)] = []byte("0123456789abcdef")
	}
	k := NewKeyCache(serialBatch{h}, KeyCacheConfig{LookupTimeout: time.Minute}, NewMetrics(prometheus.NewRegistry()), nil)
	for id := range h.keys {
		if _, err := k.PSK(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { _ = k.Refresh(context.Background()) })
	}
	for released := 0; released < 2*6; released++ {
		testwait.For(t, "a refresh query waiting", func() bool { n, _, _ := h.state(); return n > 0 })
		h.release <- struct{}{}
	}
	wg.Wait()
	if _, peak, queries := h.state(); peak != 1 || queries != 12 {
		t.Fatalf("%d queries, %d at once at most; want 12 (two passes of 6), one at a time", queries, peak)
	}
}
