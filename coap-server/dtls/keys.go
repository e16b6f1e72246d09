package dtls

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/memlimit"
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

// BatchLoader re-reads the keys of many devices at once: the map holds the
// devices of ids that still have a credential (a missing one was deleted).
// A KeyLoader that implements it lets the cache notice rotated and deleted
// credentials within RefreshInterval (see KeyCache.Refresh).
type BatchLoader interface {
	LoadPSKs(ctx context.Context, ids []string) (map[string][]byte, error)
}

// KeyCacheConfig bounds the PSK cache. Zero fields take the defaults.
type KeyCacheConfig struct {
	// MaxEntries (default 100000) bounds the known keys: about 100 bytes
	// each, so 10 MB at most. Only keys read from the database enter it, so
	// junk identities can never evict a device's key.
	MaxEntries int
	// MaxNegative (default DefaultMaxNegative of the process's memory)
	// bounds the unknown identities remembered, apart from the known keys;
	// at the bound the next one takes the place of an expired one, else of
	// any (nbiot_dtls_unknown_identity_evictions_total).
	MaxNegative int
	// TTL (default 10 min) is how long a known key is used before a
	// handshake reads it again. When that read fails (database down, pool
	// busy) the last key is served: a device that was known keeps working
	// through an outage. Revocation does not wait for TTL (RefreshInterval).
	TTL time.Duration
	// NegativeTTL (default 1 min) is how long an unknown identity is
	// remembered, so junk identities cannot make every handshake a query.
	NegativeTTL time.Duration
	// RefreshInterval (default 2 s) is how often Run re-reads the cached
	// identities' keys: a changed or deleted device_credentials row takes
	// effect, and closes that identity's sessions, within it plus the
	// length of one pass (Refresh: a query round trip per
	// refreshChunk*refreshParallel keys).
	RefreshInterval time.Duration
	// LookupTimeout (default 3 s) bounds one database read; the handshake
	// fails (or uses the stale key) rather than waits longer.
	LookupTimeout time.Duration
	// MaxConcurrentLookups (default 4) bounds database reads in flight; more
	// fail at once with ErrKeyStoreBusy (or use the stale key).
	MaxConcurrentLookups int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// File, when set, keeps the known keys on disk, sealed (KeyFile): they
	// are loaded at start as stale entries, so a restart while the
	// database is down still lets known devices in, and saved every
	// RefreshInterval after a change, and when Run ends.
	File *KeyFile
}

func (c *KeyCacheConfig) defaults() {
	if c.MaxEntries <= 0 {
		c.MaxEntries = 100000
	}
	if c.MaxNegative <= 0 {
		c.MaxNegative = DefaultMaxNegative(memlimit.Bytes())
	}
	if c.TTL <= 0 {
		c.TTL = 10 * time.Minute
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = time.Minute
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = 2 * time.Second
	}
	if c.LookupTimeout <= 0 {
		c.LookupTimeout = 3 * time.Second
	}
	if c.MaxConcurrentLookups <= 0 {
		c.MaxConcurrentLookups = defaultConcurrentLookups
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// negativeEntryBytes is what one unknown identity is charged: the longest
// a PSK identity may be (64 bytes) and its place in the map, measured at
// 124–156 B (TestNegativeEntryBytesCoverAnUnknownIdentity). Peers choose
// these identities, each after a cookie-verified handshake.
const negativeEntryBytes = 192

// DefaultMaxNegative is MaxNegative's default: as many unknown identities
// as a 256th of memory holds at negativeEntryBytes (8,533 at
// GOMEMLIMIT=400MiB: 1.6 MiB), at least 1024.
func DefaultMaxNegative(memory int64) int {
	return int(max(memory/256/negativeEntryBytes, 1024))
}

// defaultConcurrentLookups is MaxConcurrentLookups' default.
const defaultConcurrentLookups = 4

type keyEntry struct {
	psk     []byte
	expires time.Time // after it a handshake reloads; until then, or on error, psk is used
}

// KeyCache holds device PSKs in memory in front of a KeyLoader. A PSK
// callback runs in the handshake's goroutine, never on a socket's read loop,
// so a miss may wait on the database, within LookupTimeout.
//
// Known keys and unknown identities are kept in separate bounded maps.
// With KeyCacheConfig.File the known keys also outlive the process, sealed.
type KeyCache struct {
	cfg     KeyCacheConfig
	loader  KeyLoader
	metrics *Metrics
	log     *slog.Logger
	sem     chan struct{}
	// unlistedSem is the one database slot of identities the list does
	// not have (SeparateUnlisted).
	unlistedSem chan struct{}

	mu       sync.Mutex
	known    map[string]keyEntry
	unknown  map[string]time.Time // identity -> until when it is known to be unknown
	changes  changeLog            // the deletions and replacements, numbered
	onChange []func(deviceID string)
	onNotice []func() // OnKeyNotice
	// refreshing lets one Refresh run at a time.
	refreshing sync.Mutex
	dirty      atomic.Bool // known keys changed since the last save
	// listed, when set, says whether an identity has a credential row by
	// the list kept in memory (OnlyListed).
	listed atomic.Pointer[func(string) (has, known bool)]
}

// SeparateUnlisted makes a lookup of an identity that has no key here ask
// has first, the device IDs with credentials kept in memory (coap-server's
// devset, re-read every few seconds): while it has a list (known), an
// identity it does not list is looked up through one database slot of its
// own instead of the MaxConcurrentLookups ones. Junk identities (random
// ones from hosts that answered their cookie) then wait for each other,
// not for a listed device's first handshake; a device provisioned since
// the list's last re-read is still looked up, through that slot.
func (k *KeyCache) SeparateUnlisted(has func(id string) (has, known bool)) { k.listed.Store(&has) }

// NewKeyCache returns a cache reading misses through loader.
func NewKeyCache(loader KeyLoader, cfg KeyCacheConfig, m *Metrics, logger *slog.Logger) *KeyCache {
	cfg.defaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	k := &KeyCache{
		cfg: cfg, loader: loader, metrics: m, log: logger,
		sem:         make(chan struct{}, cfg.MaxConcurrentLookups),
		unlistedSem: make(chan struct{}, 1),
		known:       make(map[string]keyEntry),
		unknown:     make(map[string]time.Time),
		changes:     changeLog{last: make(map[string]uint64)},
	}
	k.loadFile()
	return k
}

// loadFile takes the keys saved by an earlier run as stale entries: a
// handshake reads the database first and falls back to them only when it
// does not answer; Refresh re-reads them like any other.
func (k *KeyCache) loadFile() {
	if k.cfg.File == nil {
		return
	}
	keys, err := k.cfg.File.Load()
	switch {
	case errors.Is(err, os.ErrNotExist):
		return
	case err != nil:
		k.log.Warn("dtls keys: the saved keys cannot be used; starting without them", "err", err)
		return
	}
	for id, psk := range keys {
		if len(k.known) >= k.cfg.MaxEntries {
			break
		}
		k.known[id] = keyEntry{psk: psk} // expired: the database is asked first
	}
	k.log.Info("dtls keys: loaded the keys saved by the last run (used only while the database does not answer)", "keys", len(k.known))
}

// save writes the known keys to File when they changed since the last save.
func (k *KeyCache) save() {
	if k.cfg.File == nil || !k.dirty.Swap(false) {
		return
	}
	k.mu.Lock()
	keys := make(map[string][]byte, len(k.known))
	for id, e := range k.known {
		keys[id] = e.psk
	}
	k.mu.Unlock()
	if err := k.cfg.File.Save(keys); err != nil {
		k.dirty.Store(true)
		k.log.Warn("dtls keys: cannot save the known keys", "err", err)
	}
}

// OnChange registers fn, called (outside the cache's lock) with a device
// whose key was deleted or replaced, so its sessions can be closed; Refresh
// may call it from several goroutines at once. A session still in its
// handshake then is not registered yet: it checks for the change itself
// (changedSince).
func (k *KeyCache) OnChange(fn func(deviceID string)) {
	k.mu.Lock()
	k.onChange = append(k.onChange, fn)
	k.mu.Unlock()
}

// PSK returns the key of deviceID, from memory when fresh, else from the
// loader; when the loader fails, the last known key (stale) is served.
// Unknown identities are cached too (NegativeTTL).
func (k *KeyCache) PSK(ctx context.Context, deviceID string) ([]byte, error) {
	now := k.cfg.Now()
	k.mu.Lock()
	e, known := k.known[deviceID]
	negUntil, negative := k.unknown[deviceID]
	mark := k.changes.seq
	k.mu.Unlock()
	if known && now.Before(e.expires) {
		k.metrics.KeyLookups.WithLabelValues("hit").Inc()
		return e.psk, nil
	}
	if negative && now.Before(negUntil) {
		k.metrics.KeyLookups.WithLabelValues("miss_cached").Inc()
		return nil, ErrUnknownDevice
	}
	sem, busy := k.sem, "busy"
	if has := k.listed.Load(); has != nil && !known {
		if in, loaded := (*has)(deviceID); loaded && !in {
			sem, busy = k.unlistedSem, "busy_unlisted"
		}
	}
	select {
	case sem <- struct{}{}:
		defer func() { <-sem }()
	default:
		if known {
			k.metrics.KeyLookups.WithLabelValues("stale").Inc()
			return e.psk, nil
		}
		k.metrics.KeyLookups.WithLabelValues(busy).Inc()
		return nil, ErrKeyStoreBusy
	}
	ctx, cancel := context.WithTimeout(ctx, k.cfg.LookupTimeout)
	defer cancel()
	psk, err := k.loader.LoadPSK(ctx, deviceID)
	switch {
	case errors.Is(err, ErrUnknownDevice):
		k.metrics.KeyLookups.WithLabelValues("unknown").Inc()
		k.markUnknown(deviceID, now)
		return nil, ErrUnknownDevice
	case err != nil && known:
		// The database is down or slow: the key it gave last still holds
		// (a deletion is seen by Refresh once it answers again).
		k.metrics.KeyLookups.WithLabelValues("stale").Inc()
		return e.psk, nil
	case err != nil:
		// Not cached: the next handshake tries again.
		k.metrics.KeyLookups.WithLabelValues("error").Inc()
		return nil, fmt.Errorf("dtls: load PSK: %w", err)
	}
	k.metrics.KeyLookups.WithLabelValues("loaded").Inc()
	key, replaced, err := k.putKnown(deviceID, psk, now, mark)
	if replaced {
		k.replaced(deviceID)
	}
	return key, err
}

// Forget drops deviceID from the cache, e.g. after its key was rotated.
func (k *KeyCache) Forget(deviceID string) {
	k.mu.Lock()
	delete(k.known, deviceID)
	delete(k.unknown, deviceID)
	k.mu.Unlock()
	k.dirty.Store(true)
}

// Len is the number of cached identities, known and unknown.
func (k *KeyCache) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.known) + len(k.unknown)
}

// Known is the number of known keys held.
func (k *KeyCache) Known() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.known)
}

// isKnown reports whether id has a key (fresh or stale) in the cache.
func (k *KeyCache) isKnown(id string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.known[id]
	return ok
}

// isUnknown reports whether id is remembered as having no credential.
func (k *KeyCache) isUnknown(id string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.unknown[id]
	return ok
}

// changeMark is the number of the latest key change: a handshake notes it
// before its PSK is looked up, to ask changedSince once it is registered.
func (k *KeyCache) changeMark() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.changes.seq
}

// changedSince reports whether id's key was deleted or replaced after
// changeMark returned mark (or may have been: see changeLog.since).
func (k *KeyCache) changedSince(id string, mark uint64) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.changes.since(id, mark)
}

// putKnown stores psk, read by a lookup that began at change number mark,
// and returns the key to serve. When id's key was deleted or replaced
// since (apply, markUnknown), the read may be older than that change:
// what the change left stays, and is served (ErrUnknownDevice when the
// key was deleted); otherwise the old key would come back for TTL. A read
// that finds another key than the (expired) one held is a replacement,
// numbered here (replaced: the caller closes the identity's sessions, as
// Refresh would have). Room is made when full: an expired key first (a
// short scan), else an arbitrary one (Go's map order is random).
func (k *KeyCache) putKnown(id string, psk []byte, now time.Time, mark uint64) (key []byte, replaced bool, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.changes.since(id, mark) {
		if e, ok := k.known[id]; ok {
			return e.psk, false, nil
		}
		return nil, false, ErrUnknownDevice
	}
	delete(k.unknown, id)
	old, had := k.known[id]
	if !had && len(k.known) >= k.cfg.MaxEntries {
		evictOne(k.known, func(e keyEntry) bool { return !now.Before(e.expires) })
		k.metrics.KeyCacheEvictions.Inc()
	}
	replaced = had && !bytes.Equal(old.psk, psk)
	if !had || replaced {
		k.dirty.Store(true)
	}
	if replaced {
		k.changes.record(id)
	}
	k.known[id] = keyEntry{psk: psk, expires: now.Add(k.cfg.TTL)}
	return psk, replaced, nil
}

// replaced counts a replaced key of id and calls the OnChange functions
// (outside the lock), which close its sessions.
func (k *KeyCache) replaced(id string) {
	k.dirty.Store(true)
	k.metrics.KeyChanges.WithLabelValues("replaced").Inc()
	k.mu.Lock()
	fns := k.onChange
	k.mu.Unlock()
	for _, fn := range fns {
		fn(id)
	}
}

// markUnknown records that id has no credential. A key it had is dropped,
// the change numbered, and its sessions are closed.
func (k *KeyCache) markUnknown(id string, now time.Time) {
	k.mu.Lock()
	_, had := k.known[id]
	delete(k.known, id)
	if had {
		k.changes.record(id)
	}
	if _, ok := k.unknown[id]; !ok && len(k.unknown) >= k.cfg.MaxNegative {
		evictOne(k.unknown, func(until time.Time) bool { return !now.Before(until) })
		k.metrics.NegativeEvictions.Inc()
	}
	k.unknown[id] = now.Add(k.cfg.NegativeTTL)
	fns := k.onChange
	k.mu.Unlock()
	if had {
		k.dirty.Store(true)
		for _, fn := range fns {
			fn(id)
		}
	}
}

// evictOne deletes an entry that expired among the first 64 looked at, else
// the first one looked at.
func evictOne[V any](m map[string]V, expired func(V) bool) {
	first, scanned := "", 0
	for key, v := range m {
		if expired(v) {
			delete(m, key)
			return
		}
		if scanned == 0 {
			first = key
		}
		if scanned++; scanned >= 64 {
			break
		}
	}
	delete(m, first)
}

// maxChanges bounds the key changes a changeLog remembers (about 100 bytes
// each). Past it, since errs on the side of "changed": only thousands of
// changes during one handshake (a mass rotation) close a session needlessly.
const maxChanges = 4096

// changeLog numbers the key changes (deleted or replaced credentials) and
// remembers which identity the latest maxChanges were of, so that a
// handshake or a lookup that began before a change of its identity can
// tell, however the change and its end interleave. Guarded by KeyCache.mu.
type changeLog struct {
	seq   uint64            // the number of the latest change
	last  map[string]uint64 // identity -> the number of its latest remembered change
	ring  []change          // the remembered changes, the oldest at next once full
	next  int
	floor uint64 // the number of the latest change forgotten
}

type change struct {
	id  string
	seq uint64
}

// record numbers a change of id, forgetting the oldest one when full.
func (c *changeLog) record(id string) {
	c.seq++
	if len(c.ring) < maxChanges {
		c.ring = append(c.ring, change{id, c.seq})
	} else {
		old := c.ring[c.next]
		if c.last[old.id] == old.seq {
			delete(c.last, old.id)
		}
		c.floor = old.seq
		c.ring[c.next] = change{id, c.seq}
		c.next = (c.next + 1) % maxChanges
	}
	c.last[id] = c.seq
}

// since reports whether id changed after change number mark. For an
// identity with no remembered change it answers yes when changes after
// mark were forgotten: it cannot tell, and a wrong no would keep an old key.
func (c *changeLog) since(id string, mark uint64) bool {
	if n, ok := c.last[id]; ok {
		return n > mark
	}
	return c.floor > mark
}
