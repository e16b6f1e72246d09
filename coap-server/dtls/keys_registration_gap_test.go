package dtls_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
)

// A key deleted between a handshake's isKnown check and its session's
// registration used to leave that session open for good: the check had
// passed, and the deletion's closeIdentity found no session to close. The
// session's own check after registering now closes it (revoked).
func TestKeyDeletedJustBeforeRegistrationClosesTheSession(t *testing.T) {
	var keys *dtls.KeyCache
	f := newFixture(t, func(c *dtls.Config) { keys = c.Keys })
	key := []byte("gap-key-0123456789ab")
	f.provision(t, "dev-gap", key)
	var once sync.Once
	deleted := make(chan struct{})
	dtls.BeforeRegistration(f.srv, func() {
		once.Do(func() {
			defer close(deleted)
			ctx := context.Background()
			if _, err := f.pool.Exec(ctx, `delete from public.device_credentials where devid = $1`, "dev-gap"); err != nil {
				t.Error(err)
			}
			if err := keys.Refresh(ctx); err != nil {
				t.Error(err)
			}
		})
	})
	cc, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), "dev-gap", key, true)
	select {
	case <-deleted:
	case <-time.After(10 * time.Second):
		t.Fatal("the handshake never reached its registration")
	}
	if got := testutil.ToFloat64(f.metrics.KeyChanges.WithLabelValues("deleted")); got != 1 {
		t.Fatalf("key changes seen (deleted) = %v, want 1", got)
	}
	revokedClosesTheSession(t, f, dialed{cc, err})
}
