package dtls

import (
	"bytes"
	"context"
	"fmt"
	"time"
)

// refreshChunk bounds the identities re-read in one query (and one REST
// URL: 100 IDs of at most 64 bytes stay well under common URL limits).
const refreshChunk = 100

// Refresh re-reads the keys of every cached known identity. A deleted
// credential becomes unknown and a replaced one takes the new key; both
// call the OnChange functions, which close the identity's sessions. On an
// error the keys not yet re-read are kept as they were (served stale).
func (k *KeyCache) Refresh(ctx context.Context) error {
	bl, ok := k.loader.(BatchLoader)
	if !ok {
		return nil
	}
	k.mu.Lock()
	ids := make([]string, 0, len(k.known))
	for id := range k.known {
		ids = append(ids, id)
	}
	k.mu.Unlock()
	for len(ids) > 0 {
		n := min(len(ids), refreshChunk)
		chunk := ids[:n]
		ids = ids[n:]
		cctx, cancel := context.WithTimeout(ctx, k.cfg.LookupTimeout)
		got, err := bl.LoadPSKs(cctx, chunk)
		cancel()
		if err != nil {
			return fmt.Errorf("dtls: refresh keys: %w", err)
		}
		now := k.cfg.Now()
		for _, id := range chunk {
			psk, still := got[id]
			k.apply(id, psk, still, now)
		}
	}
	return nil
}

// apply takes what the database says of a cached identity's key: deleted
// (still false) or psk. A deleted or replaced key closes its sessions.
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
	fns := k.onChange
	k.mu.Unlock()
	if changed {
		k.dirty.Store(true)
		k.metrics.KeyChanges.WithLabelValues("replaced").Inc()
		for _, fn := range fns {
			fn(id)
		}
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
