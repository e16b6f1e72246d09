package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// These tests use a small WebSocket server in the test as the upstream:
// it stands for a misbehaving or flapping coap-server (foreign frames,
// refused handshakes), which the real one cannot be made to produce. The
// relay's behaviour against the real coap-server is tested in relay/app.

// recorder is a watcher that keeps what it is sent.
type recorder struct {
	ch   chan []byte
	full atomic.Bool // refuse frames (a slow browser)
}

func newRecorder() *recorder { return &recorder{ch: make(chan []byte, 64)} }

func (r *recorder) Send(pm *websocket.PreparedMessage, _ int) bool {
	if r.full.Load() {
		return false
	}
	r.ch <- preparedBytes(pm)
	return true
}

func (r *recorder) TrySend(pm *websocket.PreparedMessage, cost int) bool { return r.Send(pm, cost) }

// preparedBytes recovers a prepared frame's payload by writing it to a
// real in-memory WebSocket pair.
func preparedBytes(pm *websocket.PreparedMessage) []byte {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.WritePreparedMessage(pm)
		_, _, _ = c.ReadMessage()
	}))
	defer srv.Close()
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		return nil
	}
	defer c.Close()
	_, b, _ := c.ReadMessage()
	return b
}

func (r *recorder) next(t *testing.T) map[string]any {
	t.Helper()
	select {
	case b := <-r.ch:
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no frame")
		return nil
	}
}

func (r *recorder) none(t *testing.T) {
	t.Helper()
	select {
	case b := <-r.ch:
		t.Fatalf("unexpected frame %s", b)
	default:
	}
}

// upstreamServer answers /ws; accept decides per attempt (numbered from 1)
// whether to upgrade, and serve runs on each accepted connection.
func upstreamServer(t *testing.T, accept func(n int64) bool, serve func(*websocket.Conn)) (*httptest.Server, *atomic.Int64) {
	var attempts atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" || r.URL.Query().Get("deviceId") == "" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if !accept(attempts.Add(1)) {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}))
	t.Cleanup(srv.Close)
	return srv, &attempts
}

func quickBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = time.Millisecond
	b.MaxInterval = 10 * time.Millisecond
	b.MaxElapsedTime = 0
	return b
}

func newManager(t *testing.T, url string, mut func(*Config)) (*Manager, *Metrics) {
	m := NewMetrics(prometheus.NewRegistry())
	cfg := Config{URL: "ws" + strings.TrimPrefix(url, "http") + "/ws", Token: "tok", NewBackOff: quickBackOff, Metrics: m}
	if mut != nil {
		mut(&cfg)
	}
	mgr := New(cfg)
	t.Cleanup(mgr.Close)
	return mgr, m
}

func frameFor(device string, n int) []byte {
	return []byte(`{"deviceId":"` + device + `","timestamp":"2026-11-27T12:00:00.000Z","type":"uplink","message":"m","data":{"uplink_count":` + string(rune('0'+n)) + `}}`)
}

func TestForeignAndBadFramesAreDroppedAndCounted(t *testing.T) {
	srv, _ := upstreamServer(t, func(int64) bool { return true }, func(c *websocket.Conn) {
		_ = c.WriteMessage(websocket.TextMessage, frameFor("OTHER", 1))
		_ = c.WriteMessage(websocket.TextMessage, []byte(`not json`))
		_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"uplink"}`))
		_ = c.WriteMessage(websocket.BinaryMessage, frameFor("DEV", 2))
		_ = c.WriteMessage(websocket.TextMessage, frameFor("DEV", 3))
		_, _, _ = c.ReadMessage()
	})
	mgr, m := newManager(t, srv.URL, nil)
	rec := newRecorder()
	w, err := mgr.Watch("DEV", rec)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if f := rec.next(t); f["deviceId"] != "DEV" || f["data"].(map[string]any)["uplink_count"] != 3.0 {
		t.Fatalf("got %v", f)
	}
	rec.none(t)
	for reason, want := range map[string]float64{DropForeignDevice: 1, DropUndecodable: 2, DropBinary: 1} {
		if got := testutil.ToFloat64(m.Dropped.WithLabelValues(reason)); got != want {
			t.Errorf("dropped{%s} %v, want %v", reason, got, want)
		}
	}
	if got := testutil.ToFloat64(m.Frames); got != 1 {
		t.Errorf("forwarded %v, want 1", got)
	}
}

// TestRefusedRetriesCollapseIntoOnePair: an upstream that refuses many
// handshakes in a row costs each watcher one lost and one restored entry.
func TestRefusedRetriesCollapseIntoOnePair(t *testing.T) {
	const refusals = 8
	frames := make(chan []byte, 1)
	// The attempt that succeeds waits until the late watcher has heard
	// the link is down: otherwise a test goroutine held up for the ~50 ms
	// of refusals finds the link restored.
	joined := make(chan struct{})
	srv, attempts := upstreamServer(t, func(n int64) bool {
		if n > refusals {
			<-joined
			return true
		}
		return false
	}, func(c *websocket.Conn) {
		_ = c.WriteMessage(websocket.TextMessage, <-frames)
		_, _, _ = c.ReadMessage()
	})
	var once sync.Once
	join := func() { once.Do(func() { close(joined) }) }
	t.Cleanup(join) // before the server's Close, which waits for the attempt
	mgr, m := newManager(t, srv.URL, nil)
	early, late := newRecorder(), newRecorder()
	w1, _ := mgr.Watch("DEV", early)
	defer w1.Close()
	if !w1.WaitFirstAttempt(context.Background()) {
		t.Fatal("first attempt never finished")
	}
	if f := early.next(t); f["type"] != "status" || f["data"].(map[string]any)["upstream"] != StatusLost {
		t.Fatalf("want lost, got %v", f)
	}
	// A watcher joining while the link is down hears it at once.
	w2, _ := mgr.Watch("DEV", late)
	defer w2.Close()
	if f := late.next(t); f["data"].(map[string]any)["upstream"] != StatusLost {
		t.Fatalf("late watcher: want lost, got %v", f)
	}
	join()
	for _, r := range []*recorder{early, late} {
		if f := r.next(t); f["data"].(map[string]any)["upstream"] != StatusRestored {
			t.Fatalf("want restored, got %v", f)
		}
	}
	frames <- frameFor("DEV", 4)
	for _, r := range []*recorder{early, late} {
		if f := r.next(t); f["type"] != "uplink" {
			t.Fatalf("want the uplink, got %v", f)
		}
		r.none(t)
	}
	if attempts.Load() != refusals+1 {
		t.Errorf("attempts %d, want %d", attempts.Load(), refusals+1)
	}
	if got := testutil.ToFloat64(m.DialFailures); got != refusals {
		t.Errorf("dial failures %v, want %d", got, refusals)
	}
}

func TestLastWatcherClosesTheLink(t *testing.T) {
	closed := make(chan struct{})
	srv, _ := upstreamServer(t, func(int64) bool { return true }, func(c *websocket.Conn) {
		_, _, _ = c.ReadMessage() // returns when the relay closes the link
		close(closed)
	})
	mgr, m := newManager(t, srv.URL, nil)
	w1, _ := mgr.Watch("DEV", newRecorder())
	w2, _ := mgr.Watch("DEV", newRecorder())
	w1.WaitFirstAttempt(context.Background())
	if mgr.Devices() != 1 || testutil.ToFloat64(m.Upstreams) != 1 {
		t.Fatalf("devices %d", mgr.Devices())
	}
	w1.Close()
	w1.Close() // idempotent
	select {
	case <-closed:
		t.Fatal("link closed while a watcher remains")
	default:
	}
	w2.Close()
	<-closed
	if mgr.Devices() != 0 || testutil.ToFloat64(m.Upstreams) != 0 {
		t.Fatalf("devices %d after the last watcher left", mgr.Devices())
	}
}

func TestMaxDevices(t *testing.T) {
	srv, _ := upstreamServer(t, func(int64) bool { return true }, func(c *websocket.Conn) { _, _, _ = c.ReadMessage() })
	mgr, _ := newManager(t, srv.URL, func(c *Config) { c.MaxDevices = 2 })
	for _, d := range []string{"A", "B"} {
		if _, err := mgr.Watch(d, newRecorder()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := mgr.Watch("A", newRecorder()); err != nil {
		t.Errorf("second watcher of a watched device refused: %v", err)
	}
	if _, err := mgr.Watch("C", newRecorder()); err != ErrTooManyDevices {
		t.Errorf("third device: %v, want ErrTooManyDevices", err)
	}
	mgr.Close()
	if _, err := mgr.Watch("A", newRecorder()); err != ErrClosed {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}

func TestSlowWatcherIsCounted(t *testing.T) {
	both := make(chan struct{})
	srv, _ := upstreamServer(t, func(int64) bool { return true }, func(c *websocket.Conn) {
		<-both // both watchers are registered
		_ = c.WriteMessage(websocket.TextMessage, frameFor("DEV", 1))
		_, _, _ = c.ReadMessage()
	})
	mgr, m := newManager(t, srv.URL, nil)
	slow, ok := newRecorder(), newRecorder()
	slow.full.Store(true)
	w1, _ := mgr.Watch("DEV", slow)
	defer w1.Close()
	w2, _ := mgr.Watch("DEV", ok)
	defer w2.Close()
	close(both)
	ok.next(t)
	// The drop is counted after the fan-out loop: poll for it.
	testwait.ForState(t, "one slow drop", func() (bool, string) {
		n := testutil.ToFloat64(m.Dropped.WithLabelValues(DropSlowClient))
		return n == 1, fmt.Sprint("slow drops ", n)
	})
	slow.none(t)
}

type upgradeHandler struct{ serve func(*websocket.Conn) }

func (h *upgradeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	h.serve(c)
}
