package dtls

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"
)

// refreshChunk bounds the identities re-read in one query (and one REST
// URL: 100 IDs of at most 64 bytes stay well under common URL limits).
const refreshChunk = 100

// refreshParallel bounds the queries of one Refresh in flight. Over REST
// each costs a round trip: a pass over n keys takes about
// n/refreshChunk/refreshParallel of them, not n/refreshChunk.
const refreshParallel = 8

// Refresh re-reads the keys of every cached known identity, refreshChunk
// a query, refreshParallel queries at a time. A deleted credential becomes
// unknown and a replaced one takes the new key; both call the OnChange
// functions, which close the identity's sessions. A failed query keeps its
// identities' keys as they were (served stale) and the others go on; the
// error counts the failed queries.
//
// One Refresh runs at a time (the periodic one and a LISTEN's reconnection
// may ask together), and a loader that says so (RefreshParallel: PGKeys,
// whose pool's other connections are the handshakes') gets fewer queries
// at once.
func (k *KeyCache) Refresh(ctx context.Context) error {
	bl, ok := k.loader.(BatchLoader)
	if !ok {
		return nil
	}
	k.refreshing.Lock()
	defer k.refreshing.Unlock()
	parallel := refreshParallel
	if p, ok := k.loader.(interface{ RefreshParallel() int }); ok {
		parallel = max(1, p.RefreshParallel())
	}
	chunks := chunk(k.knownIDs(), refreshChunk)
	var (
		wg     sync.WaitGroup
		sem    = make(chan struct{}, parallel)
		mu     sync.Mutex
		failed int
		first  error
	)
	for _, ids := range chunks {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := k.refreshChunk(ctx, bl, ids); err != nil {
				mu.Lock()
				failed++
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if failed > 0 {
		return fmt.Errorf("dtls: refresh keys: %d of %d queries failed: %w", failed, len(chunks), first)
	}
	return nil
}

// knownIDs lists the identities with a cached key.
func (k *KeyCache) knownIDs() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	ids := make([]string, 0, len(k.known))
	for id := range k.known {
		ids = append(ids, id)
	}
	return ids
}

// chunk splits ids into slices of at most n.
func chunk(ids []string, n int) [][]string {
	out := make([][]string, 0, (len(ids)+n-1)/n)
	for len(ids) > 0 {
		m := min(len(ids), n)
		out = append(out, ids[:m])
		ids = ids[m:]
	}
	return out
}

// refreshChunk re-reads the keys of ids in one query and applies them.
func (k *KeyCache) refreshChunk(ctx context.Context, bl BatchLoader, ids []string) error {
	ctx, cancel := context.WithTimeout(ctx, k.cfg.LookupTimeout)
	got, err := bl.LoadPSKs(ctx, ids)
	cancel()
	if err != nil {
		return err
	}
	now := k.cfg.Now()
	for _, id := range ids {
		psk, still := got[id]
		k.apply(id, psk, still, now)
	}
	return nil
}

// apply takes what the database says of a cached identity's key: deleted
// (still false) or psk. A deleted or replaced key is numbered as a change
// before its sessions are closed, so that one registered after the close
// still sees it (session.handshake).
func (k *KeyCache) apply(id string, psk []byte, still bool, now time.Time) {
	if !still {
		k.metrics.KeyChanges.WithLabelValues("deleted").Inc()
		k.markUnknown(id, now)
		return
	}
	k.mu.Lock()
	old, cached := k.known[id]
	changed := cached && !bytes.Equal(old.psk, psk)
	if cached {
		k.known[id] = keyEntry{psk: psk, expires: now.Add(k.cfg.TTL)}
	}
	if changed {
		k.changes.record(id)
	}
	k.mu.Unlock()
	if changed {
		k.replaced(id)
	}
}

// Run calls Refresh every RefreshInterval until ctx ends, and saves the
// known keys to File after a change (and once more when it ends).
// Failures (the database is down) keep the cached keys and are logged
// once, then every 60th time.
func (k *KeyCache) Run(ctx context.Context) {
	t := time.NewTicker(k.cfg.RefreshInterval)
	defer t.Stop()
	defer k.save()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := k.Refresh(ctx)
		k.save()
		switch {
		case err != nil && ctx.Err() == nil:
			failures++
			if failures == 1 || failures%60 == 0 {
				k.log.Warn("dtls keys: refresh failed; serving the cached keys", "err", err, "attempt", failures)
			}
		case err == nil && failures > 0:
			k.log.Info("dtls keys: refresh works again", "failed_attempts", failures)
			failures = 0
		}
	}
}

// Start runs Run in a goroutine; the function it returns stops it and
// waits for it.
func (k *KeyCache) Start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); k.Run(ctx) }()
	return func() { cancel(); <-done }
}
