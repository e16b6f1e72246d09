package dtls

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// slowJunkLoader answers device keys at once and holds lookups of
// identities starting with "random" until release: a slow database
// query for each junk identity.
type slowJunkLoader struct {
	keys    map[string][]byte
	release chan struct{}
	junk    atomic.Int64
}

func (l *slowJunkLoader) LoadPSK(ctx context.Context, id string) ([]byte, error) {
	if strings.HasPrefix(id, "random") {
		l.junk.Add(1)
		select {
		case <-l.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if k, ok := l.keys[id]; ok {
		return k, nil
	}
	return nil, ErrUnknownDevice
}

// With the list of devices that have credentials in memory
// (SeparateUnlisted), lookups of identities it does not list take one
// database slot of their own: a host that answers its cookie and sends
// ClientHellos with random identities held the MaxConcurrentLookups
// slots, and a device's first handshake found the key store busy. A
// device provisioned since the list's last re-read is still looked up.
func TestUnlistedIdentitiesDoNotTakeTheLookupSlots(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	l := &slowJunkLoader{keys: map[string][]byte{"listed": []byte("key-listed"), "just-provisioned": []byte("key-new")}, release: make(chan struct{})}
	k := NewKeyCache(l, KeyCacheConfig{MaxConcurrentLookups: 1}, m, nil)
	k.SeparateUnlisted(func(id string) (bool, bool) { return id == "listed", true })
	ctx := context.Background()
	junk := make(chan error, 1)
	go func() { _, err := k.PSK(ctx, "random-1"); junk <- err }()
	testwait.For(t, "a junk lookup under way", func() bool { return l.junk.Load() == 1 })
	if _, err := k.PSK(ctx, "random-2"); !errors.Is(err, ErrKeyStoreBusy) {
		t.Fatalf("a second junk lookup: %v, want ErrKeyStoreBusy (one slot for unlisted identities)", err)
	}
	if key, err := k.PSK(ctx, "listed"); err != nil || string(key) != "key-listed" {
		t.Fatalf("a listed device while junk holds a lookup: %q, %v", key, err)
	}
	close(l.release)
	if err := <-junk; !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("junk lookup: %v", err)
	}
	if key, err := k.PSK(ctx, "just-provisioned"); err != nil || string(key) != "key-new" {
		t.Fatalf("a device not listed yet: %q, %v", key, err)
	}
	if got := testutil.ToFloat64(m.KeyLookups.WithLabelValues("busy_unlisted")); got != 1 {
		t.Errorf("busy_unlisted lookups = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.KeyLookups.WithLabelValues("busy")); got != 0 {
		t.Errorf("busy lookups = %v, want 0", got)
	}
}
