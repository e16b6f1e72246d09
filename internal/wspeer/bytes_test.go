package wspeer_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

func prepared(t *testing.T, n int) *websocket.PreparedMessage {
	t.Helper()
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, []byte(strings.Repeat("x", n)))
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

// A peer's queue is bounded in bytes, not only in frames: a frame that
// would take it past QueueBytes closes the peer as slow, while a frame of
// any size is taken by an empty queue. (Peers are not run here: nothing
// drains their queues.)
func TestQueueBytesBoundThePeer(t *testing.T) {
	pm := prepared(t, 10)
	p := wspeer.New(wspeer.Config{QueueSize: 100, QueueBytes: 1000})
	if !p.Send(pm, 5000) {
		t.Fatal("an empty queue refused a frame larger than its bound")
	}
	q := wspeer.New(wspeer.Config{QueueSize: 100, QueueBytes: 1000})
	for i := range 2 {
		if !q.Send(pm, 400) {
			t.Fatalf("frame %d of 400 B refused under a bound of 1000 B", i+1)
		}
	}
	if q.TrySend(pm, 400) {
		t.Fatal("TrySend took a frame past QueueBytes")
	}
	select {
	case <-q.Done():
		t.Fatal("a refused TrySend closed the peer")
	default:
	}
	if q.Send(pm, 400) {
		t.Fatal("Send took a frame past QueueBytes")
	}
	if err := q.Reason(); !errors.Is(err, wspeer.ErrSlow) {
		t.Fatalf("closed with %v, want ErrSlow", err)
	}
}

// Peers sharing a Budget hold at most its bytes between them, except one
// frame for an empty queue; what a peer held is given back when it closes.
func TestBudgetBoundsEveryPeerTogether(t *testing.T) {
	pm := prepared(t, 10)
	b := wspeer.NewBudget(1000)
	cfg := wspeer.Config{QueueSize: 100, Budget: b}
	hog, late := wspeer.New(cfg), wspeer.New(cfg)
	for i := range 3 {
		if !hog.Send(pm, 300) {
			t.Fatalf("frame %d refused with %d of 1000 B used", i+1, b.Used())
		}
	}
	if hog.Send(pm, 300) {
		t.Fatal("the budget was exceeded by a peer with frames waiting")
	}
	if err := hog.Reason(); !errors.Is(err, wspeer.ErrBudget) {
		t.Fatalf("closed with %v, want ErrBudget", err)
	}
	if got := b.Used(); got != 0 {
		t.Fatalf("budget used %d B after the peer closed, want 0", got)
	}
	filler := wspeer.New(cfg)
	for range 3 {
		filler.Send(pm, 300)
	}
	// Over the budget: an empty queue still takes its frame, the next one
	// is refused.
	if !late.Send(pm, 300) {
		t.Fatal("a peer with an empty queue was refused for what another holds")
	}
	if late.Send(pm, 300) {
		t.Fatal("a second frame over the budget was taken")
	}
	filler.Close(wspeer.ErrClosed)
	if got := b.Used(); got != 0 {
		t.Fatalf("budget used %d B after every peer closed, want 0", got)
	}
}

// A running peer gives the bytes back as it writes: after the client read
// every frame, nothing is charged; SendWait waits for room in bytes.
func TestWrittenFramesGiveTheirBytesBack(t *testing.T) {
	b := wspeer.NewBudget(1 << 20)
	p := wspeer.New(wspeer.Config{QueueBytes: 2500, Budget: b})
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		p.Run(c)
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	const n = 50
	pm := prepared(t, 100)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for range n {
			// 1000 B each: at most two wait at once, so SendWait must wait
			// for the writer many times.
			if err := p.SendWait(ctx, pm, 1000); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range n {
		if _, _, err := ws.ReadMessage(); err != nil {
			t.Fatalf("frame %d: %v", i+1, err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("SendWait: %v", err)
	}
	// The last frame is charged until its write returned, which may be
	// just after the client read it.
	testwait.For(t, "every written frame's bytes given back", func() bool { return b.Used() == 0 })
}
