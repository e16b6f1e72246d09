package access

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/memlimit"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// CacheConfig tunes Cached. The zero value of a field takes the default.
type CacheConfig struct {
	// Allow is how long a positive answer is reused. Default 5 s, the
	// re-check interval of open sessions (browser.DefaultRecheckEvery): a
	// browser reconnecting after a blip does not query the database again,
	// and a device given away stops being watchable by new connections as
	// soon as open ones are cut (with 30 s a former owner could reconnect
	// and be sent the relay's history of the device, the new owner's
	// entries among it).
	Allow time.Duration
	// Deny is how long a negative answer is reused. Default 5 s: short, so
	// a device just claimed becomes watchable at once, long enough that a
	// client hammering a foreign device costs one query per 5 s.
	Deny time.Duration
	// MaxEntries bounds the cache (keyed by user and device, both chosen by
	// remote parties). Default DefaultMaxEntries of the process's memory;
	// when full, expired entries go first, then arbitrary ones (counted).
	MaxEntries int
	// MaxConcurrent bounds checks running at once. Default 8: the Postgres
	// pool or the REST API are never stormed by a burst of reconnects;
	// waiting requests give up with their context (ErrUnavailable).
	MaxConcurrent int
	// Now is the clock for expiry. Default time.Now.
	Now func() time.Time
}

func (c CacheConfig) withDefaults() CacheConfig {
	if c.Allow <= 0 {
		c.Allow = 5 * time.Second
	}
	if c.Deny <= 0 {
		c.Deny = 5 * time.Second
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = DefaultMaxEntries(memlimit.Bytes())
	}
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = 8
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// EntryBytes is what one cached answer is charged: its key (a user ID of
// Supabase's 36 characters, the role, a device ID of up to 64), the answer
// and its place in the map, measured at 219 B
// (TestEntryBytesCoverACachedAnswer).
const EntryBytes = 320

// DefaultMaxEntries is MaxEntries' default: as many answers as a 128th of
// memory holds at EntryBytes (10,240 at GOMEMLIMIT=400MiB: 3.1 MiB), at
// least 1024.
func DefaultMaxEntries(memory int64) int {
	return int(max(memory/128/EntryBytes, 1024))
}

// Metrics counts access checks.
type Metrics struct {
	// Checks by result: allowed, denied, error, limited (the caller's budget
	// of uncached checks was spent); cache hits are labelled
	// allowed_cached / denied_cached.
	Checks    *prometheus.CounterVec
	Evictions prometheus.Counter
}

// NewMetrics registers the access metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_access_checks_total", Help: "Device access checks by result.",
		}, []string{"result"}),
		Evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_access_cache_evictions_total", Help: "Unexpired access answers evicted because the cache was full.",
		}),
	}
	reg.MustRegister(m.Checks, m.Evictions)
	return m
}

type entry struct {
	allowed bool
	expires time.Time
}

// Cached wraps a Checker with a bounded answer cache and a concurrency
// limit. Backend errors are never cached.
type Cached struct {
	inner   Checker
	cfg     CacheConfig
	metrics *Metrics
	sem     chan struct{}

	mu      sync.Mutex
	entries map[string]entry
}

// NewCached wraps inner.
func NewCached(inner Checker, cfg CacheConfig, m *Metrics) *Cached {
	cfg = cfg.withDefaults()
	return &Cached{
		inner:   inner,
		cfg:     cfg,
		metrics: m,
		sem:     make(chan struct{}, cfg.MaxConcurrent),
		entries: make(map[string]entry),
	}
}

// Check implements Checker.
func (c *Cached) Check(ctx context.Context, cl *auth.Claims, token, deviceID string) error {
	return c.CheckGated(ctx, cl, token, deviceID, nil)
}

// CheckGated is Check with a budget: on a cache miss, before the backend is
// asked, allow (when not nil) is called, and when it says no the check
// fails with ErrLimited (counted as result "limited") without taking one of
// the MaxConcurrent slots. Cache hits never spend the budget, so a caller
// flooding random device IDs is held to its own rate while answers already
// known keep flowing to everyone.
func (c *Cached) CheckGated(ctx context.Context, cl *auth.Claims, token, deviceID string, allow func() bool) error {
	key := cacheKey(cl, deviceID)
	if allowed, ok := c.lookup(key); ok {
		if allowed {
			c.metrics.Checks.WithLabelValues("allowed_cached").Inc()
			return nil
		}
		c.metrics.Checks.WithLabelValues("denied_cached").Inc()
		return ErrDenied
	}
	if allow != nil && !allow() {
		c.metrics.Checks.WithLabelValues("limited").Inc()
		return ErrLimited
	}
	return c.ask(ctx, key, cl, token, deviceID)
}

// Refresh asks the backend again whatever the cache holds and caches the
// answer: the relay re-checks open sessions with it, so a device given
// away or a user removed is seen within one re-check interval, by open
// sessions and new connections alike. Errors are returned, never cached.
func (c *Cached) Refresh(ctx context.Context, cl *auth.Claims, token, deviceID string) error {
	return c.ask(ctx, cacheKey(cl, deviceID), cl, token, deviceID)
}

// cacheKey: the subject and role are what the RLS policies see (auth.uid()).
func cacheKey(cl *auth.Claims, deviceID string) string {
	return cl.Subject + "\x00" + cl.Role + "\x00" + deviceID
}

func (c *Cached) ask(ctx context.Context, key string, cl *auth.Claims, token, deviceID string) error {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		c.metrics.Checks.WithLabelValues("error").Inc()
		return fmt.Errorf("%w: too many checks in flight: %v", ErrUnavailable, ctx.Err())
	}
	err := c.inner.Check(ctx, cl, token, deviceID)
	<-c.sem
	switch {
	case err == nil:
		c.store(key, true)
		c.metrics.Checks.WithLabelValues("allowed").Inc()
	case errors.Is(err, ErrDenied):
		c.store(key, false)
		c.metrics.Checks.WithLabelValues("denied").Inc()
	default:
		c.metrics.Checks.WithLabelValues("error").Inc()
	}
	return err
}

func (c *Cached) lookup(key string) (allowed, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return false, false
	}
	if !c.cfg.Now().Before(e.expires) {
		delete(c.entries, key)
		return false, false
	}
	return e.allowed, true
}

func (c *Cached) store(key string, allowed bool) {
	ttl := c.cfg.Deny
	if allowed {
		ttl = c.cfg.Allow
	}
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.entries[key]; !exists && len(c.entries) >= c.cfg.MaxEntries {
		for k, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < c.cfg.MaxEntries {
				break
			}
			delete(c.entries, k)
			c.metrics.Evictions.Inc()
		}
	}
	c.entries[key] = entry{allowed: allowed, expires: now.Add(ttl)}
}

// Len is the number of cached answers, for tests.
func (c *Cached) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
