package upstream

import (
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// recordingBackOff waits 1 ms and counts Reset calls.
type recordingBackOff struct{ resets *atomic.Int64 }

func (r recordingBackOff) NextBackOff() time.Duration { return time.Millisecond }
func (r recordingBackOff) Reset()                     { r.resets.Add(1) }

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestBackOffResetsOnlyAfterAStableConnection: connections that drop at
// once (a flapping upstream) keep the backoff growing; one that lasted
// StableAfter (by the injected clock) resets it.
func TestBackOffResetsOnlyAfterAStableConnection(t *testing.T) {
	const flaps = 5
	var resets atomic.Int64
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	stable, release, last := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var n atomic.Int64
	srv := httptest.NewServer(wrapUpgrade(func(c *websocket.Conn) {
		switch k := n.Add(1); {
		case k <= flaps: // accept and drop at once
		case k == flaps+1:
			stable <- struct{}{}
			<-release
		case k == flaps+2:
			close(last)
			_, _, _ = c.ReadMessage()
		default:
			_, _, _ = c.ReadMessage()
		}
	}))
	t.Cleanup(srv.Close)
	mgr, m := newManager(t, srv.URL, func(c *Config) {
		c.NewBackOff = func() backoff.BackOff { return recordingBackOff{&resets} }
		c.Now = clk.Now
	})
	rec := newRecorder()
	w, _ := mgr.Watch("DEV", rec)
	defer w.Close()
	<-stable
	// The link records the start of a connection before it counts it as connected.
	testwait.For(t, "the stable connection counted", func() bool { return testutil.ToFloat64(m.Connected) == 1 })
	if got := resets.Load(); got != 1 {
		t.Fatalf("resets after %d flaps: %d, want only the initial one", flaps, got)
	}
	clk.Add(11 * time.Second) // the connection has now lasted StableAfter
	close(release)
	<-last
	if got := resets.Load(); got != 2 {
		t.Fatalf("resets after a stable connection: %d, want 2", got)
	}
	// Every flap was announced as a lost/restored pair, in order.
	want := []string{}
	for range flaps + 1 {
		want = append(want, StatusLost, StatusRestored)
	}
	for i, s := range want {
		f := rec.next(t)
		if f["type"] != "status" || f["data"].(map[string]any)["upstream"] != s {
			t.Fatalf("status %d: %v, want %s", i, f, s)
		}
	}
	rec.none(t)
}

// wrapUpgrade is an upstream handler that upgrades every request and runs serve.
func wrapUpgrade(serve func(*websocket.Conn)) *upgradeHandler { return &upgradeHandler{serve: serve} }
