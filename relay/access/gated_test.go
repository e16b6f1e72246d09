package access_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// The budget is spent on cache misses only: a refused miss never reaches
// the backend, and a cached answer is served whatever the budget.
func TestCheckGatedSpendsOnMissesOnly(t *testing.T) {
	var calls atomic.Int64
	m := access.NewMetrics(prometheus.NewRegistry())
	c := access.NewCached(owned(&calls), access.CacheConfig{}, m)
	cl := &auth.Claims{Subject: "u1", Role: "authenticated"}
	ctx := context.Background()
	var asked int
	budget := func(n int) func() bool {
		return func() bool { asked++; n--; return n >= 0 }
	}(1)
	if err := c.CheckGated(ctx, cl, "", "u1-dev", budget); err != nil {
		t.Fatalf("first miss: %v", err)
	}
	if err := c.CheckGated(ctx, cl, "", "u1-dev", budget); err != nil {
		t.Fatalf("cached: %v", err)
	}
	if err := c.CheckGated(ctx, cl, "", "random-1", budget); !errors.Is(err, access.ErrLimited) {
		t.Fatalf("miss past the budget: %v, want ErrLimited", err)
	}
	if calls.Load() != 1 || asked != 2 {
		t.Errorf("backend asked %d times, budget %d times; want 1 and 2", calls.Load(), asked)
	}
	if got := testutil.ToFloat64(m.Checks.WithLabelValues("limited")); got != 1 {
		t.Errorf("checks{limited} %v, want 1", got)
	}
}

// Refresh asks the backend whatever is cached and caches the new answer.
func TestRefreshReplacesCachedAnswer(t *testing.T) {
	var calls atomic.Int64
	allowed := atomic.Bool{}
	allowed.Store(true)
	inner := access.CheckerFunc(func(context.Context, *auth.Claims, string, string) error {
		calls.Add(1)
		if allowed.Load() {
			return nil
		}
		return access.ErrDenied
	})
	c := access.NewCached(inner, access.CacheConfig{}, access.NewMetrics(prometheus.NewRegistry()))
	cl := &auth.Claims{Subject: "u1", Role: "authenticated"}
	ctx := context.Background()
	if err := c.Check(ctx, cl, "", "d"); err != nil {
		t.Fatal(err)
	}
	allowed.Store(false)
	if err := c.Check(ctx, cl, "", "d"); err != nil {
		t.Fatalf("cached allow expected: %v", err)
	}
	if err := c.Refresh(ctx, cl, "", "d"); !errors.Is(err, access.ErrDenied) {
		t.Fatalf("refresh: %v, want ErrDenied", err)
	}
	if err := c.Check(ctx, cl, "", "d"); !errors.Is(err, access.ErrDenied) {
		t.Fatalf("after refresh: %v, want the cached denial", err)
	}
	if calls.Load() != 2 {
		t.Errorf("backend asked %d times, want 2", calls.Load())
	}
}
