package dtls_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// testClock is a settable clock for KeyCacheConfig.Now.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// clusterFixture is a CoAPS server whose keys come from a private Postgres
// cluster the test may stop, through a cache on clock that re-reads its
// keys every RefreshInterval (default 2 s) as in production.
func clusterFixture(t *testing.T, clock *testClock) (*fixture, *pgtest.Cluster, *pgxpool.Pool, *dtls.KeyCache) {
	t.Helper()
	return clusterFixtureWith(t, dtls.KeyCacheConfig{Now: clock.Now, LookupTimeout: time.Second})
}

// clusterFixtureWith is clusterFixture with the key cache configured by cfg.
func clusterFixtureWith(t *testing.T, cfg dtls.KeyCacheConfig) (*fixture, *pgtest.Cluster, *pgxpool.Pool, *dtls.KeyCache) {
	t.Helper()
	cluster := pgtest.StartCluster(t)
	pool, err := pgxpool.New(context.Background(), cluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var keys *dtls.KeyCache
	f := newFixture(t, func(c *dtls.Config) {
		keys = dtls.NewKeyCache(dtls.PGKeys{Pool: pool}, cfg, c.Metrics, discard)
		c.Keys = keys
		c.HandshakeTimeout = 2 * time.Second
	})
	t.Cleanup(keys.Start())
	return f, cluster, pool, keys
}

func provisionOn(t *testing.T, pool *pgxpool.Pool, device string, psk []byte) {
	t.Helper()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `insert into public.devices (devid) values ($1) on conflict do nothing`, device); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `insert into public.device_credentials (devid, psk) values ($1, $2)`, device, psk); err != nil {
		t.Fatal(err)
	}
}

// Database stopped and the cached key long expired: a device that was
// known still connects and is served; one never seen does not.
func TestKnownDeviceConnectsWhileTheDatabaseIsDown(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f, cluster, pool, _ := clusterFixture(t, clock)
	key := []byte("outage-key-0123456789")
	provisionOn(t, pool, "dev-outage", key)
	provisionOn(t, pool, "dev-other", []byte("other-key-0123456789"))
	cc, dc, err := dialGo(t, udpSocket(t), f.srv.Addr(), "dev-outage", key, true)
	if err != nil {
		t.Fatalf("handshake with the database up: %v", err)
	}
	_ = cc.Close()
	_ = dc.Close()

	cluster.Stop(t)
	clock.Add(24 * time.Hour) // every cached key expired
	cc, _, err = dialGo(t, udpSocket(t), f.srv.Addr(), "dev-outage", key, true)
	if err != nil {
		t.Fatalf("handshake with the database down: %v", err)
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("uplink with the database down: %v, want 2.04", code)
	}
	if got := lookups(f, "stale"); got < 1 {
		t.Errorf("stale lookups = %v, want >= 1", got)
	}
	// Never read before the outage: nothing to serve.
	if _, _, err := dialGoWithin(t, udpSocket(t), f.srv.Addr(), "dev-other", []byte("other-key-0123456789"), true, 3*time.Second); err == nil {
		t.Error("a device never seen before the outage connected")
	}
}

// A deleted credential closes the device's open session and refuses its
// next handshake (RefreshInterval 2 s: the time taken is logged; the test
// allows 15 s, for a refresh that runs late on loaded cores).
func TestDeletedCredentialEndsTheSessionWithinSeconds(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f, _, pool, _ := clusterFixture(t, clock)
	key := []byte("revoke-key-0123456789")
	deleteEndsTheSession(t, f, pool, "dev-revoke", key)
	if _, _, err := dialGoWithin(t, udpSocket(t), f.srv.Addr(), "dev-revoke", key, true, 3*time.Second); err == nil {
		t.Fatal("a deleted credential still completes a handshake")
	}
	if ok := f.handshakes("ok"); ok != 1 {
		t.Errorf("handshakes ok = %v, want 1", ok)
	}
}

// A replaced key closes the session made with the old one; the new key works.
func TestReplacedKeyEndsTheOldSession(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f, _, pool, _ := clusterFixture(t, clock)
	old, rotated := []byte("old-key-0123456789ab"), []byte("new-key-0123456789ab")
	provisionOn(t, pool, "dev-rotate", old)
	cc, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), "dev-rotate", old, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), `update public.device_credentials set psk = $2 where devid = $1`, "dev-rotate", rotated); err != nil {
		t.Fatal(err)
	}
	replaced := time.Now()
	select {
	case <-cc.Done():
		t.Logf("the session ended %v after its key was replaced", time.Since(replaced))
	case <-time.After(15 * time.Second):
		t.Fatal("the session made with a replaced key is still open after 15 s")
	}
	cc, _, err = dialGo(t, udpSocket(t), f.srv.Addr(), "dev-rotate", rotated, true)
	if err != nil {
		t.Fatalf("handshake with the new key: %v", err)
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("uplink with the new key: %v", code)
	}
}

// An unknown identity and a wrong key end the same way for the peer: no
// alert, the handshake just never completes (decoy key); the server logs
// which it was.
func TestUnknownIdentityLooksLikeAWrongKey(t *testing.T) {
	f := newFixture(t, func(c *dtls.Config) { c.HandshakeTimeout = 2 * time.Second })
	f.provision(t, "dev-real", []byte("real-key-0123456789a"))
	_, _, errWrong := dialGoWithin(t, udpSocket(t), f.srv.Addr(), "dev-real", []byte("not-the-key-01234567"), true, 2*time.Second)
	_, _, errUnknown := dialGoWithin(t, udpSocket(t), f.srv.Addr(), "dev-nobody", []byte("not-the-key-01234567"), true, 2*time.Second)
	if errWrong == nil || errUnknown == nil {
		t.Fatalf("wrong key: %v; unknown identity: %v; want both to fail", errWrong, errUnknown)
	}
	if errWrong.Error() != errUnknown.Error() {
		t.Errorf("the peer can tell them apart:\nwrong key:        %v\nunknown identity: %v", errWrong, errUnknown)
	}
	testwait.For(t, "both failures on the server", func() bool { return f.handshakes("failed") >= 2 }, testwait.Within(10*time.Second))
}

// One session per identity: a new handshake by the same device closes the
// older session, and the newer one is served.
func TestNewHandshakeReplacesTheIdentitysOlderSession(t *testing.T) {
	f := newFixture(t, nil)
	key := []byte("twice-key-0123456789")
	f.provision(t, "dev-twice", key)
	first, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), "dev-twice", key, true)
	if err != nil {
		t.Fatal(err)
	}
	second, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), "dev-twice", key, true)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("the older session is still open after 15 s")
	}
	if code := postGo(t, second, &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("uplink on the newer session: %v", code)
	}
	if got := testutil.ToFloat64(f.metrics.SessionsClosed.WithLabelValues("replaced")); got != 1 {
		t.Errorf("sessions replaced = %v, want 1", got)
	}
	testwait.For(t, "one session left", func() bool { return testutil.ToFloat64(f.metrics.Sessions) == 1 })
}

// The session bound is sized to memory: an over-large setting is lowered.
func TestMaxSessionsFitsMemory(t *testing.T) {
	f := newFixture(t, func(c *dtls.Config) { c.MaxSessions = 1 << 30 })
	limit, _ := dtls.MemoryLimit()
	if got, want := f.srv.MaxSessions(), dtls.SessionsFor(limit); got != want {
		t.Fatalf("MaxSessions = %d, want %d for %d bytes", got, want, limit)
	}
}

// At the session limit (2 here) a new device's session takes the place of
// the one silent the longest, once that one has been silent for
// EvictIdle, counted as evicted; while every session was in use within
// EvictIdle, the new handshake is refused instead. (It was refused
// whatever the others did: a device that had gone quiet for hours kept
// its slot from a device that wanted to send.)
func TestSessionLimitEvictsTheIdlest(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFixture(t, func(c *dtls.Config) { c.MaxSessions = 2; c.Now = clock.Now })
	key := func(d string) []byte { return []byte(d + "-key-0123456789") }
	for _, d := range []string{"dev-a", "dev-b", "dev-c"} {
		f.provision(t, d, key(d))
	}
	open := func(d string) *udpClient.Conn {
		t.Helper()
		cc, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), d, key(d), true)
		if err != nil {
			t.Fatalf("handshake of %s: %v", d, err)
		}
		if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
			t.Fatalf("uplink of %s: %v", d, code)
		}
		return cc
	}
	a, b := open("dev-a"), open("dev-b")
	refused := func() float64 { return testutil.ToFloat64(f.metrics.Refused.WithLabelValues(dtls.ErrSessions.Error())) }
	if _, _, err := dialGoWithin(t, udpSocket(t), f.srv.Addr(), "dev-c", key("dev-c"), true, 3*time.Second); err == nil {
		t.Fatal("a third session at a limit of 2, with both others in use")
	}
	if refused() == 0 {
		t.Error("the refusal was not counted")
	}
	clock.Add(dtls.EvictIdle + time.Second) // both silent that long; then a speaks
	if code := postGo(t, a, &nbiotv1.Uplink{UplinkCount: 2}); code != codes.Changed {
		t.Fatalf("uplink of dev-a: %v", code)
	}
	c := open("dev-c")
	select {
	case <-b.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("dev-b, silent the longest, still has its session")
	}
	if got := testutil.ToFloat64(f.metrics.SessionsClosed.WithLabelValues("evicted")); got != 1 {
		t.Errorf("sessions evicted = %v, want 1", got)
	}
	for name, cc := range map[string]*udpClient.Conn{"dev-a": a, "dev-c": c} {
		if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 3}); code != codes.Changed {
			t.Errorf("uplink of %s after the eviction: %v", name, code)
		}
	}
}

// Two devices established at the session limit at the same moment push
// out two different idle sessions. Both used to pick the one silent the
// longest: it was closed twice, the other stayed, and the server held one
// session over its limit for as long as that one lived.
func TestTwoSessionsAtTheLimitEvictTwo(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFixture(t, func(c *dtls.Config) { c.MaxSessions = 2; c.Now = clock.Now })
	key := func(d string) []byte { return []byte(d + "-key-0123456789") }
	devices := []string{"dev-a", "dev-b", "dev-c", "dev-d"}
	for _, d := range devices {
		f.provision(t, d, key(d))
	}
	conns := make([]*udpClient.Conn, len(devices))
	open := func(i int) error {
		cc, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), devices[i], key(devices[i]), true)
		if err != nil {
			return err
		}
		conns[i] = cc
		return nil
	}
	for i := range 2 {
		if err := open(i); err != nil {
			t.Fatalf("handshake of %s: %v", devices[i], err)
		}
		// Answered once the server has registered the session.
		if code := postGo(t, conns[i], &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
			t.Fatalf("uplink of %s: %v", devices[i], code)
		}
	}
	clock.Add(dtls.EvictIdle + time.Second) // dev-a and dev-b silent that long
	// dev-c and dev-d meet before registering, so both find the server at
	// its limit with the same two idle sessions.
	var (
		mu      sync.Mutex
		arrived int
		both    = make(chan struct{})
	)
	dtls.BeforeRegistration(f.srv, func() {
		mu.Lock()
		if arrived++; arrived == 2 {
			close(both)
		}
		mu.Unlock()
		select {
		case <-both:
		case <-time.After(10 * time.Second):
			t.Error("the other handshake never reached its registration")
		}
	})
	var wg sync.WaitGroup
	errs := make([]error, len(devices))
	for i := 2; i < 4; i++ {
		wg.Go(func() { errs[i] = open(i) })
	}
	wg.Wait()
	for i := 2; i < 4; i++ {
		if errs[i] != nil {
			t.Fatalf("handshake of %s: %v", devices[i], errs[i])
		}
	}
	for i := range 2 {
		select {
		case <-conns[i].Done():
		case <-time.After(15 * time.Second):
			t.Fatalf("%s still has its session: the server holds %v sessions at a limit of 2",
				devices[i], testutil.ToFloat64(f.metrics.Sessions))
		}
	}
	if got := testutil.ToFloat64(f.metrics.SessionsClosed.WithLabelValues("evicted")); got != 2 {
		t.Errorf("sessions evicted = %v, want 2", got)
	}
	if got := testutil.ToFloat64(f.metrics.Sessions); got != 2 {
		t.Errorf("sessions = %v, want 2", got)
	}
	for i := 2; i < 4; i++ {
		if code := postGo(t, conns[i], &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
			t.Errorf("uplink of %s after the evictions: %v", devices[i], code)
		}
	}
}

// A session's answers, which go-coap keeps 247 s for retransmissions, are
// bounded: past MaxExchanges new message IDs within that window a request
// is dropped and counted (the device retransmits it), and once the window
// has passed the device is served again. Unbounded, one key holder sending
// fresh message IDs made a session hold 11 MiB of answers.
func TestSessionAnswersAreBounded(t *testing.T) {
	clock := &testClock{t: time.Now()}
	f := newFixture(t, func(c *dtls.Config) { c.Now = clock.Now })
	key := []byte("dev-many-key-0123456789")
	f.provision(t, "dev-many", key)
	cc, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), "dev-many", key, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := range dtls.MaxExchanges {
		if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: uint32(i + 1)}); code != codes.Changed {
			t.Fatalf("uplink %d: %v", i+1, code)
		}
	}
	payload, err := proto.Marshal(&nbiotv1.Uplink{DeviceId: "dev-many", UplinkCount: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, err = cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(payload))
	cancel()
	if err == nil {
		t.Fatalf("uplink %d answered: the session's answers are not bounded", dtls.MaxExchanges+1)
	}
	if got := testutil.ToFloat64(f.metrics.RequestsDropped.WithLabelValues("exchanges")); got == 0 {
		t.Error("the dropped request was not counted")
	}
	clock.Add(252 * time.Second) // the first answers have expired
	if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 1001}); code != codes.Changed {
		t.Fatalf("uplink after the window: %v", code)
	}
}

// deleteEndsTheSession provisions device, opens a session and sends an
// uplink, deletes the credential, and fails unless the session ends (within
// 15 s, the time taken logged), counted as revoked.
func deleteEndsTheSession(t *testing.T, f *fixture, pool *pgxpool.Pool, device string, key []byte) {
	t.Helper()
	provisionOn(t, pool, device, key)
	cc, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), device, key, true)
	if err != nil {
		t.Fatal(err)
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("uplink: %v", code)
	}
	if _, err := pool.Exec(context.Background(), `delete from public.device_credentials where devid = $1`, device); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	select {
	case <-cc.Done():
		t.Logf("the session ended %v after its credential was deleted", time.Since(deleted))
	case <-time.After(15 * time.Second):
		t.Fatal("the session of a deleted credential is still open after 15 s")
	}
	if got := testutil.ToFloat64(f.metrics.SessionsClosed.WithLabelValues("revoked")); got != 1 {
		t.Errorf("sessions closed as revoked = %v, want 1", got)
	}
}
