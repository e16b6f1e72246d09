package access_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// owned allows a device whose ID starts with the user's subject.
func owned(calls *atomic.Int64) access.CheckerFunc {
	return func(_ context.Context, c *auth.Claims, _, device string) error {
		calls.Add(1)
		if len(device) >= len(c.Subject) && device[:len(c.Subject)] == c.Subject {
			return nil
		}
		return access.ErrDenied
	}
}

func TestCacheTTLs(t *testing.T) {
	var calls atomic.Int64
	clk := &clock{t: time.Unix(1e9, 0)}
	m := access.NewMetrics(prometheus.NewRegistry())
	c := access.NewCached(owned(&calls), access.CacheConfig{Now: clk.Now}, m)
	u := &auth.Claims{Subject: "u1", Role: "authenticated"}
	ctx := context.Background()
	check := func(device string, wantErr error, wantCalls int64) {
		t.Helper()
		if err := c.Check(ctx, u, "tok", device); !errors.Is(err, wantErr) {
			t.Fatalf("%s: %v, want %v", device, err, wantErr)
		}
		if calls.Load() != wantCalls {
			t.Fatalf("%s: %d backend calls, want %d", device, calls.Load(), wantCalls)
		}
	}
	check("u1-dev", nil, 1)
	check("other", access.ErrDenied, 2)
	clk.Add(4 * time.Second)
	check("u1-dev", nil, 2)             // positive: cached 5 s
	check("other", access.ErrDenied, 2) // negative: cached 5 s
	clk.Add(2 * time.Second)
	check("other", access.ErrDenied, 3) // negative expired
	check("u1-dev", nil, 4)             // positive expired after 6 s
	if got := testutil.ToFloat64(m.Checks.WithLabelValues("allowed_cached")); got != 1 {
		t.Errorf("allowed_cached %v", got)
	}
}

// A device given away stops being watchable by its former owner's new
// connections within the re-check interval of open ones (5 s): with 30 s,
// a former owner who had closed their tabs could reconnect for the rest of
// the half minute and be sent the relay's history of the device, the new
// owner's entries among it, before the re-check cut them off. (Found in
// an audit.)
func TestGivenAwayDeviceIsDeniedWithinTheRecheckInterval(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	var owner atomic.Value
	owner.Store("a")
	c := access.NewCached(access.CheckerFunc(func(_ context.Context, cl *auth.Claims, _, _ string) error {
		if cl.Subject != owner.Load().(string) {
			return access.ErrDenied
		}
		return nil
	}), access.CacheConfig{Now: clk.Now}, access.NewMetrics(prometheus.NewRegistry()))
	a := &auth.Claims{Subject: "a", Role: "authenticated"}
	if err := c.Check(context.Background(), a, "tok", "dev"); err != nil {
		t.Fatal(err)
	}
	owner.Store("b") // given away
	clk.Add(browserRecheckEvery + time.Second)
	if err := c.Check(context.Background(), a, "tok", "dev"); !errors.Is(err, access.ErrDenied) {
		t.Fatalf("former owner %v after %v, want ErrDenied", err, browserRecheckEvery+time.Second)
	}
}

// browserRecheckEvery is relay/browser's DefaultRecheckEvery (not
// imported: browser imports access).
const browserRecheckEvery = 5 * time.Second

func TestCacheNeverKeepsErrors(t *testing.T) {
	var calls atomic.Int64
	down := access.CheckerFunc(func(context.Context, *auth.Claims, string, string) error {
		calls.Add(1)
		return fmt.Errorf("%w: db down", access.ErrUnavailable)
	})
	c := access.NewCached(down, access.CacheConfig{}, access.NewMetrics(prometheus.NewRegistry()))
	for range 3 {
		if err := c.Check(context.Background(), &auth.Claims{Subject: "u"}, "", "d"); !errors.Is(err, access.ErrUnavailable) {
			t.Fatal(err)
		}
	}
	if calls.Load() != 3 || c.Len() != 0 {
		t.Errorf("calls %d, cached %d", calls.Load(), c.Len())
	}
}

func TestCacheIsBounded(t *testing.T) {
	var calls atomic.Int64
	m := access.NewMetrics(prometheus.NewRegistry())
	c := access.NewCached(owned(&calls), access.CacheConfig{MaxEntries: 50}, m)
	u := &auth.Claims{Subject: "u"}
	for i := range 500 {
		_ = c.Check(context.Background(), u, "", fmt.Sprintf("dev-%d", i))
	}
	if c.Len() > 50 {
		t.Errorf("cache holds %d entries, limit 50", c.Len())
	}
	if got := testutil.ToFloat64(m.Evictions); got != 450 {
		t.Errorf("evictions %v, want 450", got)
	}
}

func TestConcurrentChecksAreBounded(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	var running, peak atomic.Int64
	slow := access.CheckerFunc(func(ctx context.Context, _ *auth.Claims, _, _ string) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		entered <- struct{}{}
		<-release
		running.Add(-1)
		return nil
	})
	c := access.NewCached(slow, access.CacheConfig{MaxConcurrent: 2}, access.NewMetrics(prometheus.NewRegistry()))
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Check(context.Background(), &auth.Claims{Subject: "u"}, "", fmt.Sprint("d", i))
		}()
	}
	<-entered
	<-entered
	// Both slots are taken: a third check gives up with its context.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Check(ctx, &auth.Claims{Subject: "u"}, "", "d3"); !errors.Is(err, access.ErrUnavailable) {
		t.Fatalf("third check: %v, want ErrUnavailable", err)
	}
	close(release)
	wg.Wait()
	if peak.Load() != 2 {
		t.Errorf("peak concurrency %d, want 2", peak.Load())
	}
}
