package dtls_test

import (
	"context"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// With Postgres, a deleted credential ends the device's session by
// LISTEN/NOTIFY, without waiting for the periodic re-read (an hour here),
// and a credential added for an identity just refused as unknown is
// accepted at its next handshake, without waiting out the negative entry.
func TestKeyChangesArriveByNotify(t *testing.T) {
	f, cluster, pool, keys := clusterFixtureWith(t, dtls.KeyCacheConfig{RefreshInterval: time.Hour, NegativeTTL: time.Hour, LookupTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	listening := make(chan struct{})
	go func() { defer close(listening); keys.ListenPG(ctx, cluster.URL) }()
	t.Cleanup(func() { cancel(); <-listening })

	// A device provisioned after its first (refused) handshake.
	late := []byte("late-key-0123456789ab")
	if _, _, err := dialGoWithin(t, udpSocket(t), f.srv.Addr(), "dev-late", late, true, 2*time.Second); err == nil {
		t.Fatal("a device without a credential completed a handshake")
	}
	provisionOn(t, pool, "dev-late", late)
	testwait.For(t, "the late device's handshake", func() bool {
		_, _, err := dialGoWithin(t, udpSocket(t), f.srv.Addr(), "dev-late", late, true, 2*time.Second)
		return err == nil
	}, testwait.Within(10*time.Second))

	// The periodic re-read is an hour away: only NOTIFY can end it in 5 s.
	deleteEndsTheSession(t, f, pool, "dev-notify", []byte("notify-key-0123456789"))
}

// A key added reaches OnKeyNotice by LISTEN/NOTIFY, so that the list of
// credentialed devices (which refuses them plain CoAP) re-reads itself at
// once rather than within its 5 s.
func TestKeyNoticeArrivesByNotify(t *testing.T) {
	_, cluster, pool, keys := clusterFixtureWith(t, dtls.KeyCacheConfig{RefreshInterval: time.Hour})
	notices := make(chan struct{}, 16)
	keys.OnKeyNotice(func() {
		select {
		case notices <- struct{}{}:
		default:
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	listening := make(chan struct{})
	go func() { defer close(listening); keys.ListenPG(ctx, cluster.URL) }()
	t.Cleanup(func() { cancel(); <-listening })
	select {
	case <-notices: // the (re)connection: anything may have changed meanwhile
	case <-time.After(15 * time.Second):
		t.Fatal("no notice when the LISTEN connected")
	}
	provisionOn(t, pool, "dev-noticed", []byte("noticed-key-0123456789"))
	select {
	case <-notices:
	case <-time.After(15 * time.Second):
		t.Fatal("no notice for a key added")
	}
}
