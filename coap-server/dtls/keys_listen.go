package dtls

import (
	"context"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// KeyChannel is the LISTEN channel the device_credentials trigger
// notifies (supabase/migrations, payload = the devid) on every insert,
// update and delete.
const KeyChannel = "nbiot_device_key"

// OnKeyNotice registers fn, called (on ListenPG's goroutine: it must not
// block) on every notification of a device_credentials change and every
// (re)connection of the LISTEN, when anything may have changed: the list
// of credentialed devices (devset) re-reads itself then instead of within
// its interval, so plain CoAP stops speaking for a device as soon as it
// has a key.
func (k *KeyCache) OnKeyNotice(fn func()) {
	k.mu.Lock()
	k.onNotice = append(k.onNotice, fn)
	k.mu.Unlock()
}

func (k *KeyCache) heard() {
	k.mu.Lock()
	fns := k.onNotice
	k.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// ListenPG keeps a dedicated connection to dsn on LISTEN nbiot_device_key
// until ctx ends (supa.Listen: reconnects with backoff, never gives up),
// so a changed or deleted credential takes effect, and closes the
// identity's sessions, as soon as it commits; a new one for an identity
// remembered as unknown is asked for at its next handshake. On every
// (re)connection it re-reads every cached key (notifications sent while
// disconnected are lost); the periodic Refresh stays as a safety net.
// The loader must be a BatchLoader (PGKeys is).
func (k *KeyCache) ListenPG(ctx context.Context, dsn string) {
	bl, ok := k.loader.(BatchLoader)
	if !ok {
		k.log.Error("dtls keys: LISTEN needs a loader that re-reads keys; not listening")
		return
	}
	supa.Listen(ctx, dsn, KeyChannel, supa.Listener{
		Connected: func(ctx context.Context) error {
			k.heard()
			return k.Refresh(ctx)
		},
		Notify: func(ctx context.Context, payload string) {
			k.heard()
			id, err := ParseIdentity([]byte(payload))
			if err != nil {
				return // not a device ID: nothing of ours
			}
			k.mu.Lock()
			_, cached := k.known[id]
			delete(k.unknown, id) // a new credential is asked for at once
			k.mu.Unlock()
			if !cached {
				return
			}
			rctx, cancel := context.WithTimeout(ctx, k.cfg.LookupTimeout)
			got, err := bl.LoadPSKs(rctx, []string{id})
			cancel()
			if err != nil {
				// The periodic Refresh tries again.
				k.log.Warn("dtls keys: notified key not read", "device", id, "err", err)
				return
			}
			psk, still := got[id]
			k.apply(id, psk, still, k.cfg.Now())
		},
		Lost: func(err error, backoff time.Duration) {
			k.log.Warn("dtls keys: LISTEN lost, reconnecting", "err", err, "backoff", backoff.String())
		},
		Undelivered: func() {
			k.log.Warn("dtls keys: DATABASE_URL does not deliver notifications (a transaction pooler, such as Supabase's on port 6543, drops them): " +
				"a changed or deleted key takes effect at the next periodic re-read (" + k.cfg.RefreshInterval.String() + "), not as it commits. " +
				"Use the direct connection or the session pooler (port 5432)")
		},
	})
}
