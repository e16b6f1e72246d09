package dtls

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// KeyChannel is the LISTEN channel the device_credentials trigger
// notifies (supabase/migrations, payload = the devid) on every insert,
// update and delete.
const KeyChannel = "nbiot_device_key"

// ListenPG keeps a dedicated connection to dsn on LISTEN nbiot_device_key
// until ctx ends, so a changed or deleted credential takes effect, and
// closes the identity's sessions, as soon as it commits; a new one for an
// identity remembered as unknown is asked for at its next handshake. On
// every (re)connection it re-reads every cached key (notifications sent
// while disconnected are lost). It reconnects with backoff (1 s doubling
// to 30 s) and never gives up; the periodic Refresh stays as a safety net.
func (k *KeyCache) ListenPG(ctx context.Context, dsn string) {
	backoff := time.Second
	for ctx.Err() == nil {
		err := k.listenOnce(ctx, dsn, func() { backoff = time.Second })
		if ctx.Err() != nil {
			return
		}
		k.log.Warn("dtls keys: LISTEN lost, reconnecting", "err", err, "backoff", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (k *KeyCache) listenOnce(ctx context.Context, dsn string, connected func()) error {
	bl, ok := k.loader.(BatchLoader)
	if !ok {
		return fmt.Errorf("dtls keys: the loader cannot re-read keys")
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "listen "+KeyChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := k.Refresh(ctx); err != nil {
		return err
	}
	connected()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait: %w", err)
		}
		id, err := ParseIdentity([]byte(n.Payload))
		if err != nil {
			continue // not a device ID: nothing of ours
		}
		k.mu.Lock()
		_, cached := k.known[id]
		delete(k.unknown, id) // a new credential is asked for at once
		k.mu.Unlock()
		if !cached {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, k.cfg.LookupTimeout)
		got, err := bl.LoadPSKs(rctx, []string{id})
		cancel()
		if err != nil {
			// The periodic Refresh tries again.
			k.log.Warn("dtls keys: notified key not read", "device", id, "err", err)
			continue
		}
		psk, still := got[id]
		k.apply(id, psk, still, k.cfg.Now())
	}
}
