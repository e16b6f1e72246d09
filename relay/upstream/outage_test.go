package upstream

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// TestTailLinkWhoseFirstDialFailedAsksForTheOutage: a link opened with
// tail=1 whose first dial fails redials with its tail plus OutageTail
// (History, 3): 6 8 10, published while it was away, reach its watcher.
// Redialing with tail=1 again brought 10 alone and lost 6 and 8 without a
// word.
func TestTailLinkWhoseFirstDialFailedAsksForTheOutage(t *testing.T) {
	f := newFakeLog(t, 2, 4)
	f.down = true
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.History = 3 })
	d := newDecoder(t)
	w := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 1})
	testwait.For(t, "a failed dial", func() bool { return testutil.ToFloat64(m.DialFailures) >= 1 })
	f.set(func(f *fakeLog) { f.seqs = evens(2, 10); f.down = false })
	w.waitSeqs(t, 4, 6, 8, 10)
	q := f.dialed()
	if q[0].Get("tail") != "1" || q[len(q)-1].Get("tail") != "4" {
		t.Errorf("first dial %v, last %v: want tail=1, then tail=4", q[0], q[len(q)-1])
	}
}

// TestLiveLinkWithoutHistoryAsksForTheOutage: with no history kept
// (RELAY_HISTORY=0), a live link whose first dial fails still redials for
// the entries published while it was away (DefaultHistory of them), not
// with tail=0, which lost them.
func TestLiveLinkWithoutHistoryAsksForTheOutage(t *testing.T) {
	f := newFakeLog(t)
	f.down = true
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.History = -1 })
	d := newDecoder(t)
	w := watchFrom(t, mgr, d, LiveOnly)
	testwait.For(t, "a failed dial", func() bool { return testutil.ToFloat64(m.DialFailures) >= 1 })
	f.set(func(f *fakeLog) { f.seqs = []uint64{6, 8}; f.down = false })
	w.waitSeqs(t, 6, 8)
	if q := f.dialed(); q[len(q)-1].Get("tail") != fmt.Sprint(DefaultHistory) {
		t.Errorf("redial %v, want tail=%d", q[len(q)-1], DefaultHistory)
	}
}

// TestTailStartDuringAnOutageJoinsTheSharedLink: while the shared link is
// down, a tail start is answered from its ring and gets what the redial
// brings after it (12 14, published during the outage), with no dedicated
// upstream. Before, every such start opened a dedicated link of its own,
// which answered its tail from the log as it was when that link connected
// (12 14): 8 and 10, the entries it asked for, were missing.
func TestTailStartDuringAnOutageJoinsTheSharedLink(t *testing.T) {
	f := newFakeLog(t, evens(2, 10)...)
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.History = 10 })
	d := newDecoder(t)
	w1 := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 3})
	w1.waitSeqs(t, 6, 8, 10)
	testwait.For(t, "the position", func() bool { return testutil.ToFloat64(m.Positions) == 1 })
	f.set(func(f *fakeLog) { f.down = true })
	f.cut()
	testwait.For(t, "a failed redial", func() bool { return testutil.ToFloat64(m.DialFailures) >= 1 })
	w2 := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 2})
	if n := testutil.ToFloat64(m.Starts.WithLabelValues(StartDedicated)); n != 0 {
		t.Errorf("%v dedicated starts during the outage, want 0", n)
	}
	if w2.backlog < 2+MaxTail {
		t.Errorf("backlog %d: no room for what the redial (since) may bring", w2.backlog)
	}
	f.set(func(f *fakeLog) { f.seqs = evens(2, 14); f.down = false })
	w1.waitSeqs(t, 6, 8, 10, 12, 14)
	w2.waitSeqs(t, 8, 10, 12, 14)
}

// queueSender stands for a browser's bounded queue (wspeer.Peer): Send
// on a full queue cuts the browser off, TrySend drops the frame.
type queueSender struct {
	mu     sync.Mutex
	queue  []*websocket.PreparedMessage
	size   int
	closed bool
}

func (q *queueSender) Send(pm *websocket.PreparedMessage, _ int) bool {
	if q.TrySend(pm, 0) {
		return true
	}
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	return false
}

func (q *queueSender) TrySend(pm *websocket.PreparedMessage, _ int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || len(q.queue) >= q.size {
		return false
	}
	q.queue = append(q.queue, pm)
	return true
}

// drain empties the queue (the browser wrote its frames) and reports
// whether it was cut off.
func (q *queueSender) drain() (int, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.queue)
	q.queue = nil
	return n, q.closed
}

// TestRetransmissionReportsNeverCutABrowser: a flood of retransmission
// reports (frames without seq; anyone can replay a device's datagrams)
// beyond a browser's queue is dropped and counted, and the browser stays
// open for the next entry. Before, the report that found the queue full
// cut it off, as coap-server's /ws never does.
func TestRetransmissionReportsNeverCutABrowser(t *testing.T) {
	f := newFakeLog(t)
	mgr, m := newManager(t, f.srv.URL, nil)
	q := &queueSender{size: 2}
	w, err := mgr.Watch("DEV", q)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	testwait.For(t, "the position", func() bool { return testutil.ToFloat64(m.Positions) == 1 })
	report, err := livelog.Retransmission("DEV", time.Now(), 1, 1, 2).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		f.send(string(report))
	}
	drops := func() float64 {
		return testutil.ToFloat64(m.Dropped.WithLabelValues(DropNotice)) + testutil.ToFloat64(m.Dropped.WithLabelValues(DropSlowClient))
	}
	testwait.ForState(t, "three reports dropped", func() (bool, string) { return drops() == 3, fmt.Sprint(drops()) })
	if n := testutil.ToFloat64(m.Dropped.WithLabelValues(DropNotice)); n != 3 {
		t.Errorf("%v drops counted as notices, want 3", n)
	}
	if n, closed := q.drain(); n != 2 || closed {
		t.Fatalf("queued %d reports, cut off %v: want 2, open", n, closed)
	}
	f.publish(7)
	testwait.For(t, "the entry", func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.queue) == 1
	})
}
