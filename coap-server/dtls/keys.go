package dtls

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Errors of the key store.
var (
	// ErrUnknownDevice: no credential for that identity (PSK callbacks turn
	// it into a failed handshake).
	ErrUnknownDevice = errors.New("dtls: no PSK for this identity")
	// ErrKeyStoreBusy: too many lookups are already waiting on the database.
	ErrKeyStoreBusy = errors.New("dtls: key store busy")
)

// KeyLoader reads one device's PSK from the database. It returns
// ErrUnknownDevice (wrapped or not) when the device has no credential.
type KeyLoader interface {
	LoadPSK(ctx context.Context, deviceID string) ([]byte, error)
}

// KeyCacheConfig bounds the PSK cache. Zero fields take the defaults.
type KeyCacheConfig struct {
	// MaxEntries (default 100000) bounds the cache, known and unknown
	// identities together: about 100 bytes each, so 10 MB at most.
	MaxEntries int
	// TTL (default 10 min) is how long a known key is trusted before it is
	// read again, so a rotated or deleted credential takes effect.
	TTL time.Duration
	// NegativeTTL (default 1 min) is how long an unknown identity is
	// remembered, so junk identities cannot make every handshake a query.
	NegativeTTL time.Duration
	// LookupTimeout (default 3 s) bounds one database read; the handshake
	// fails rather than waits longer.
	LookupTimeout time.Duration
	// MaxConcurrentLookups (default 4) bounds database reads in flight; more
	// fail at once with ErrKeyStoreBusy.
	MaxConcurrentLookups int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *KeyCacheConfig) defaults() {
	if c.MaxEntries <= 0 {
		c.MaxEntries = 100000
	}
	if c.TTL <= 0 {
		c.TTL = 10 * time.Minute
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = time.Minute
	}
	if c.LookupTimeout <= 0 {
		c.LookupTimeout = 3 * time.Second
	}
	if c.MaxConcurrentLookups <= 0 {
		c.MaxConcurrentLookups = 4
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

type keyEntry struct {
	psk     []byte // nil: unknown identity (negative entry)
	expires time.Time
}

// KeyCache holds device PSKs in memory in front of a KeyLoader. A PSK
// callback runs in the handshake's goroutine, never on a socket's read loop,
// so a miss may wait on the database, within LookupTimeout.
type KeyCache struct {
	cfg     KeyCacheConfig
	loader  KeyLoader
	metrics *Metrics
	log     *slog.Logger
	sem     chan struct{}

	mu      sync.Mutex
	entries map[string]keyEntry
}

// NewKeyCache returns a cache reading misses through loader.
func NewKeyCache(loader KeyLoader, cfg KeyCacheConfig, m *Metrics, logger *slog.Logger) *KeyCache {
	cfg.defaults()
	return &KeyCache{
		cfg: cfg, loader: loader, metrics: m, log: logger,
		sem:     make(chan struct{}, cfg.MaxConcurrentLookups),
		entries: make(map[string]keyEntry),
	}
}

// PSK returns the key of deviceID, from memory when fresh, else from the
// loader. Unknown identities are cached too (NegativeTTL).
func (k *KeyCache) PSK(ctx context.Context, deviceID string) ([]byte, error) {
	now := k.cfg.Now()
	k.mu.Lock()
	e, ok := k.entries[deviceID]
	k.mu.Unlock()
	if ok && now.Before(e.expires) {
		if e.psk == nil {
			k.metrics.KeyLookups.WithLabelValues("miss_cached").Inc()
			return nil, ErrUnknownDevice
		}
		k.metrics.KeyLookups.WithLabelValues("hit").Inc()
		return e.psk, nil
	}
	select {
	case k.sem <- struct{}{}:
		defer func() { <-k.sem }()
	default:
		k.metrics.KeyLookups.WithLabelValues("busy").Inc()
		return nil, ErrKeyStoreBusy
	}
	ctx, cancel := context.WithTimeout(ctx, k.cfg.LookupTimeout)
	defer cancel()
	psk, err := k.loader.LoadPSK(ctx, deviceID)
	switch {
	case errors.Is(err, ErrUnknownDevice):
		k.metrics.KeyLookups.WithLabelValues("unknown").Inc()
		k.put(deviceID, keyEntry{expires: now.Add(k.cfg.NegativeTTL)})
		return nil, ErrUnknownDevice
	case err != nil:
		// Not cached: the next handshake tries again.
		k.metrics.KeyLookups.WithLabelValues("error").Inc()
		return nil, fmt.Errorf("dtls: load PSK: %w", err)
	}
	k.metrics.KeyLookups.WithLabelValues("loaded").Inc()
	k.put(deviceID, keyEntry{psk: psk, expires: now.Add(k.cfg.TTL)})
	return psk, nil
}

// Forget drops deviceID from the cache, e.g. after its key was rotated.
func (k *KeyCache) Forget(deviceID string) {
	k.mu.Lock()
	delete(k.entries, deviceID)
	k.mu.Unlock()
}

// Len is the number of cached identities.
func (k *KeyCache) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.entries)
}

// put stores e, making room when full: expired entries first, then an
// arbitrary one (Go's map order is random, which spreads evictions evenly
// enough and costs nothing to keep).
func (k *KeyCache) put(id string, e keyEntry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.entries[id]; !ok && len(k.entries) >= k.cfg.MaxEntries {
		now := k.cfg.Now()
		scanned := 0
		for key, old := range k.entries {
			if !now.Before(old.expires) {
				delete(k.entries, key)
			}
			if scanned++; scanned >= 64 {
				break
			}
		}
		for key := range k.entries {
			if len(k.entries) < k.cfg.MaxEntries {
				break
			}
			delete(k.entries, key)
			k.metrics.KeyCacheEvictions.Inc()
		}
	}
	k.entries[id] = e
}
