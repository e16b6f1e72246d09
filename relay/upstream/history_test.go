package upstream

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

// fakeLog stands for coap-server's /ws with a retained log of one device
// (seq, since, tail, recovered:false, and with position=1 the position
// frame after the history), with knobs the real one cannot be made to
// turn: refuse dials, cut every connection, ignore since (resend old
// entries), reset the stream, be a coap-server from before position=1
// (noPosition). relay/app tests the real coap-server.
type fakeLog struct {
	srv *httptest.Server

	mu          sync.Mutex
	seqs        []uint64
	subs        map[chan []byte]*websocket.Conn
	dials       []url.Values
	down        bool
	ignoreSince bool
	noPosition  bool
	// holdTail, when set, stops a connection opened with tail=holdTail
	// after holdAfter frames of its answer until hold is closed.
	holdTail  string
	holdAfter int
	hold      chan struct{}
}

func newFakeLog(t *testing.T, seqs ...uint64) *fakeLog {
	f := &fakeLog{seqs: seqs, subs: make(map[chan []byte]*websocket.Conn)}
	f.srv = httptest.NewServer(f)
	t.Cleanup(func() { f.cut(); f.srv.Close() })
	return f
}

func entryFrame(seq uint64) []byte {
	return fmt.Appendf(nil, `{"seq":%d,"deviceId":"DEV","timestamp":"2026-12-01T12:00:00.000Z","type":"uplink","message":"Received uplink #%d","data":{}}`, seq, seq)
}

func positionFrame(p uint64) []byte {
	return fmt.Appendf(nil, `{"deviceId":"DEV","timestamp":"2026-12-01T12:00:00.000Z","type":"status","message":"History sent: live from here","data":{"position":%d}}`, p)
}

const lostFrame = `{"deviceId":"DEV","timestamp":"2026-12-01T12:00:00.000Z","type":"status","message":"Earlier entries are no longer retained","data":{"recovered":false}}`

func (f *fakeLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f.mu.Lock()
	f.dials = append(f.dials, q)
	if f.down {
		f.mu.Unlock()
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	var backlog [][]byte
	switch {
	case q.Has("since") && !f.ignoreSince:
		since, _ := strconv.ParseUint(q.Get("since"), 10, 64)
		if n := len(f.seqs); n > 0 && since > f.seqs[n-1] || n == 0 && since > 0 {
			// Beyond the newest position (a reset): everything retained.
			backlog = append(backlog, []byte(lostFrame))
			since = 0
		}
		for _, s := range f.seqs {
			if s > since {
				backlog = append(backlog, entryFrame(s))
			}
		}
	case q.Has("tail"), f.ignoreSince && q.Has("since"):
		n := len(f.seqs)
		if q.Has("tail") {
			n, _ = strconv.Atoi(q.Get("tail"))
		}
		for _, s := range f.seqs[max(0, len(f.seqs)-n):] {
			backlog = append(backlog, entryFrame(s))
		}
	}
	if q.Get("position") == "1" && !f.noPosition {
		newest := uint64(0)
		if n := len(f.seqs); n > 0 {
			newest = f.seqs[n-1]
		}
		backlog = append(backlog, positionFrame(newest))
	}
	c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
	if err != nil {
		f.mu.Unlock()
		return
	}
	ch := make(chan []byte, 4096)
	f.subs[ch] = c
	holdAt, hold := -1, f.hold
	if f.holdTail != "" && q.Get("tail") == f.holdTail {
		holdAt = f.holdAfter
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
		_ = c.Close()
	}()
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	for i, b := range backlog {
		if i == holdAt {
			select {
			case <-hold:
			case <-gone:
				return
			}
		}
		if c.WriteMessage(websocket.TextMessage, b) != nil {
			return
		}
	}
	for {
		select {
		case <-gone:
			return
		case b := <-ch:
			if c.WriteMessage(websocket.TextMessage, b) != nil {
				return
			}
		}
	}
}

// publish appends entries to the log and sends them to live subscribers.
func (f *fakeLog) publish(seqs ...uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range seqs {
		f.seqs = append(f.seqs, s)
		for ch := range f.subs {
			ch <- entryFrame(s)
		}
	}
}

// send sends one raw frame to live subscribers only.
func (f *fakeLog) send(b string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		ch <- []byte(b)
	}
}

// cut closes every connection from the server side.
func (f *fakeLog) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch, c := range f.subs {
		_ = c.Close()
		delete(f.subs, ch)
	}
}

func (f *fakeLog) set(fn func(f *fakeLog)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeLog) subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

func (f *fakeLog) dialed() []url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.dials)
}

// decoder turns prepared frames back into bytes over one real WebSocket pair.
type decoder struct {
	mu       sync.Mutex
	srv, cli *websocket.Conn
}

func newDecoder(t *testing.T) *decoder {
	conns := make(chan *websocket.Conn, 1)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err == nil {
			conns <- c
		}
	}))
	t.Cleanup(hs.Close)
	cli, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &decoder{srv: <-conns, cli: cli}
	t.Cleanup(func() { _ = cli.Close(); _ = d.srv.Close() })
	return d
}

func (d *decoder) bytes(pm *websocket.PreparedMessage) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.srv.WritePreparedMessage(pm) != nil {
		return nil
	}
	_, b, _ := d.cli.ReadMessage()
	return b
}

// logWatcher records what one watcher is sent.
type logWatcher struct {
	d       *decoder
	mu      sync.Mutex
	frames  []map[string]any
	backlog int
}

func (w *logWatcher) Send(pm *websocket.PreparedMessage, _ int) bool {
	var m map[string]any
	_ = json.Unmarshal(w.d.bytes(pm), &m)
	w.mu.Lock()
	w.frames = append(w.frames, m)
	w.mu.Unlock()
	return true
}

func (w *logWatcher) TrySend(pm *websocket.PreparedMessage, cost int) bool { return w.Send(pm, cost) }

// seqs are the seqs received so far, and the number of frames without one.
func (w *logWatcher) seqs() ([]uint64, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []uint64
	other := 0
	for _, f := range w.frames {
		if s, ok := f["seq"].(float64); ok {
			out = append(out, uint64(s))
		} else {
			other++
		}
	}
	return out, other
}

// waitSeqs waits until the watcher has received want (in this order, and
// nothing else with a seq).
func (w *logWatcher) waitSeqs(t *testing.T, want ...uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := w.seqs()
		if slices.Equal(got, want) {
			return
		}
		if len(got) > len(want) || !slices.Equal(got, want[:len(got)]) || time.Now().After(deadline) {
			t.Fatalf("seqs %v, want %v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func (w *logWatcher) texts() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, f := range w.frames {
		if _, ok := f["seq"]; ok {
			out = append(out, fmt.Sprint(f["seq"]))
			continue
		}
		d, _ := f["data"].(map[string]any)
		switch {
		case d["upstream"] != nil:
			out = append(out, fmt.Sprint(d["upstream"]))
		case d["recovered"] != nil:
			out = append(out, "recovered:false")
		default:
			out = append(out, "other")
		}
	}
	return out
}

func watchFrom(t *testing.T, mgr *Manager, d *decoder, r Resume) *logWatcher {
	t.Helper()
	lw := &logWatcher{d: d}
	w, err := mgr.WatchFrom("DEV", r, func(b Backlog) Sender { lw.backlog = b.Frames; return lw })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return lw
}

func evens(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s += 2 {
		out = append(out, s)
	}
	return out
}

// TestStartsServedFromTheRingOrADedicatedLink: the first watcher opens the
// link with its own tail; later starts the ring covers are answered from
// it without a dial; the others get a dedicated upstream with their own
// since or tail, closed with them.
func TestStartsServedFromTheRingOrADedicatedLink(t *testing.T) {
	f := newFakeLog(t, evens(2, 40)...) // a device's seqs are increasing, not consecutive
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.History = 10 })
	d := newDecoder(t)

	w1 := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 5})
	w1.waitSeqs(t, evens(32, 40)...)
	if q := f.dialed(); len(q) != 1 || q[0].Get("tail") != "5" || q[0].Get("deviceId") != "DEV" || q[0].Get("retransmissions") != "1" {
		t.Fatalf("dials %v, want one with tail=5", q)
	}
	w2 := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 3})
	w2.waitSeqs(t, 36, 38, 40)
	w3 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 35})
	w3.waitSeqs(t, 36, 38, 40)
	w4 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 40})
	live := watchFrom(t, mgr, d, LiveOnly)
	if w2.backlog != 3 || w3.backlog != 3 || w4.backlog != 0 || live.backlog != 0 {
		t.Errorf("backlogs %d %d %d %d, want the ring's answers 3 3 0 0", w2.backlog, w3.backlog, w4.backlog, live.backlog)
	}
	if n := len(f.dialed()); n != 1 {
		t.Fatalf("%d dials, want the ring to answer without one", n)
	}
	// since=30: entries between 30 and 32 may exist; tail=8: the ring holds 5.
	old := watchFrom(t, mgr, d, Resume{Mode: Since, N: 30})
	old.waitSeqs(t, evens(32, 40)...)
	deep := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 8})
	deep.waitSeqs(t, evens(26, 40)...)
	if old.backlog != MaxTail+1 || deep.backlog != 8 {
		t.Errorf("dedicated backlogs %d %d, want %d 8", old.backlog, deep.backlog, MaxTail+1)
	}
	q := f.dialed()
	if len(q) != 3 || q[1].Get("since") != "30" || q[2].Get("tail") != "8" {
		t.Fatalf("dials %v", q)
	}
	// Caught up, both move to the shared link: one upstream connection again.
	testwait.For(t, "dedicated links to merge", func() bool {
		return testutil.ToFloat64(m.Dedicated) == 0 && f.subscribers() == 1
	})
	if got := testutil.ToFloat64(m.Merges.WithLabelValues(MergeJoined)); got != 2 {
		t.Errorf("merged %v, want 2", got)
	}
	f.publish(42)
	w1.waitSeqs(t, evens(32, 42)...)
	w2.waitSeqs(t, 36, 38, 40, 42)
	w3.waitSeqs(t, 36, 38, 40, 42)
	w4.waitSeqs(t, 42)
	live.waitSeqs(t, 42)
	old.waitSeqs(t, evens(32, 42)...)
	deep.waitSeqs(t, evens(26, 42)...)
	for served, want := range map[string]float64{StartRing: 3, StartUpstream: 1, StartDedicated: 2} {
		if got := testutil.ToFloat64(m.Starts.WithLabelValues(served)); got != want {
			t.Errorf("starts{%s} %v, want %v", served, got, want)
		}
	}
	if mgr.Devices() != 1 {
		t.Errorf("devices %d: dedicated links are not shared links", mgr.Devices())
	}
	// The merged links' rings are released as they close.
	testwait.For(t, "history bytes of the shared ring only", func() bool {
		return testutil.ToFloat64(m.HistoryBytes) == float64(6*(wspeer.FrameCost(len(entryFrame(40)))))
	})
}

// TestTailWhileTheLinksOwnAnswerIsInFlight: a tail start that arrives
// while the shared link's connection is still sending its own history
// gets exactly its tail. The ring then holds the answer's first entries
// only, and everything still to come would be forwarded to the new
// watcher too: tail=3 got 24 26 28 and then the rest of the first
// watcher's answer, 30 to 40.
func TestTailWhileTheLinksOwnAnswerIsInFlight(t *testing.T) {
	f := newFakeLog(t, evens(2, 40)...)
	f.set(func(f *fakeLog) { f.holdTail, f.holdAfter, f.hold = "10", 4, make(chan struct{}) })
	mgr, _ := newManager(t, f.srv.URL, func(c *Config) { c.History = 20 })
	d := newDecoder(t)

	first := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 10})
	first.waitSeqs(t, 22, 24, 26, 28) // the link's answer, held after 4 of 10
	three := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 3})
	three.waitSeqs(t, 36, 38, 40)
	one := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 1})
	one.waitSeqs(t, 40)
	close(f.hold)
	first.waitSeqs(t, evens(22, 40)...)
	f.publish(42)
	first.waitSeqs(t, evens(22, 42)...)
	three.waitSeqs(t, 36, 38, 40, 42)
	one.waitSeqs(t, 40, 42)
	// Its answer complete, the shared ring answers tails again.
	later := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 2})
	later.waitSeqs(t, 40, 42)
}

// TestDedicatedLinkBecomesTheSharedOne: when the shared link's last
// watcher leaves, a remaining dedicated link takes its place, and later
// starts are answered from its ring.
func TestDedicatedLinkBecomesTheSharedOne(t *testing.T) {
	f := newFakeLog(t, evens(2, 20)...)
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.History = 3; c.MergeEvery = time.Millisecond })
	d := newDecoder(t)
	lw := &logWatcher{d: d}
	first, err := mgr.WatchFrom("DEV", Resume{Mode: Tail, N: 1}, func(Backlog) Sender { return lw })
	if err != nil {
		t.Fatal(err)
	}
	lw.waitSeqs(t, 20)
	f.set(func(f *fakeLog) { f.down = true }) // the shared link cannot cover since=2 …
	deep := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 10})
	if got := testutil.ToFloat64(m.Dedicated); got != 1 {
		t.Fatalf("dedicated %v, want 1", got)
	}
	first.Close() // … and then it is gone
	f.set(func(f *fakeLog) { f.down = false })
	deep.waitSeqs(t, evens(2, 20)...)
	testwait.For(t, "promotion", func() bool { return testutil.ToFloat64(m.Merges.WithLabelValues(MergePromoted)) == 1 })
	if mgr.Devices() != 1 || testutil.ToFloat64(m.Dedicated) != 0 || testutil.ToFloat64(m.Upstreams) != 1 {
		t.Fatalf("devices %d, dedicated %v, upstreams %v", mgr.Devices(), testutil.ToFloat64(m.Dedicated), testutil.ToFloat64(m.Upstreams))
	}
	dials := len(f.dialed())
	late := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 2})
	late.waitSeqs(t, 18, 20)
	f.publish(22)
	deep.waitSeqs(t, evens(2, 22)...)
	late.waitSeqs(t, 18, 20, 22)
	if n := len(f.dialed()); n != dials {
		t.Errorf("%d more dials: the promoted link's ring should answer", n-dials)
	}
}

// TestMergeAfterLostSaysRestored: a dedicated link whose connection
// dropped told its watcher "lost"; merged onto the shared link, which is
// up, the watcher hears "restored" before the entries it missed (it never
// did: the page kept showing the stream as interrupted). The links are set
// up by hand, without connections, to reach that state exactly.
func TestMergeAfterLostSaysRestored(t *testing.T) {
	m := New(Config{URL: "ws://127.0.0.1:1/ws", Token: "t", Metrics: NewMetrics(prometheus.NewRegistry())})
	t.Cleanup(m.Close)
	shared := newLink(m, "DEV", LiveOnly)
	shared.state = stateUp
	m.links["DEV"] = shared
	for s := uint64(10); s <= 20; s++ {
		shared.forward(websocket.TextMessage, entryFrame(s))
	}
	d := newLink(m, "DEV", Resume{Mode: Since, N: 1})
	d.dedicated.Store(true)
	m.dedicated[d] = struct{}{}
	lw := &logWatcher{d: newDecoder(t)}
	d.add(&Watch{m: m, link: d, first: d.firstAttempt, sender: lw})
	d.state = stateUp
	for s := uint64(2); s <= 15; s++ {
		d.forward(websocket.TextMessage, entryFrame(s))
	}
	d.setState(stateDown)
	if !m.merge(d) {
		t.Fatal("not merged")
	}
	for s := uint64(21); s <= 22; s++ {
		shared.forward(websocket.TextMessage, entryFrame(s))
	}
	want := []string{"2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
		"lost", "restored", "16", "17", "18", "19", "20", "21", "22"}
	if got := lw.texts(); !slices.Equal(got, want) {
		t.Fatalf("frames %v, want %v", got, want)
	}
}

// TestFirstWatcherWithSinceOpensTheLinkWithIt: the link's first dial is the
// first watcher's own since, and a second watcher since the same position
// is answered from the ring while the first catch-up may still be arriving.
func TestFirstWatcherWithSinceOpensTheLinkWithIt(t *testing.T) {
	f := newFakeLog(t, evens(2, 20)...)
	f.noPosition = true // when the history ends, the link learns from the clock only
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	mgr, _ := newManager(t, f.srv.URL, func(c *Config) { c.Now = clk.Now })
	d := newDecoder(t)
	w1 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 10})
	w2 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 10})
	w1.waitSeqs(t, evens(12, 20)...)
	w2.waitSeqs(t, evens(12, 20)...)
	if q := f.dialed(); len(q) != 1 || q[0].Get("since") != "10" {
		t.Fatalf("dials %v", q)
	}
	// Whether w2 came before, during or after the link's history, its
	// queue was sized for all of it (from the ring, or still to arrive).
	if w2.backlog < 5 {
		t.Errorf("second watcher's backlog %d, want room for the 5 entries of the first's history", w2.backlog)
	}
	// While the connection is young, what since=10 may still bring counts;
	// after HistoryBurst, a new watcher needs room for its answer only.
	w3 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 16})
	w3.waitSeqs(t, 18, 20)
	if w3.backlog != 2+MaxTail+1-5 {
		t.Errorf("third watcher's backlog %d, want 2 + what since=10 may still bring (%d)", w3.backlog, MaxTail+1-5)
	}
	clk.Add(11 * time.Second)
	w4 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 16})
	w4.waitSeqs(t, 18, 20)
	if w4.backlog != 2 {
		t.Errorf("fourth watcher's backlog %d, want 2", w4.backlog)
	}
}

// TestReconnectResumesAfterTheLastForwarded: entries published while the
// link is down arrive once after it is back, after lost/restored.
func TestReconnectResumesAfterTheLastForwarded(t *testing.T) {
	f := newFakeLog(t, 1, 3, 5)
	mgr, m := newManager(t, f.srv.URL, nil)
	d := newDecoder(t)
	w := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 10})
	w.waitSeqs(t, 1, 3, 5)
	f.set(func(f *fakeLog) { f.down = true })
	f.cut()
	testwait.For(t, "a failed redial", func() bool { return testutil.ToFloat64(m.DialFailures) >= 2 })
	f.publish(7, 9) // while the relay is away
	f.set(func(f *fakeLog) { f.down = false })
	w.waitSeqs(t, 1, 3, 5, 7, 9)
	f.publish(11)
	w.waitSeqs(t, 1, 3, 5, 7, 9, 11)
	if got, want := strings.Join(w.texts(), " "), "1 3 5 lost restored 7 9 11"; got != want {
		t.Errorf("frames %q, want %q", got, want)
	}
	for _, q := range f.dialed()[1:] {
		if q.Get("since") != "5" || q.Has("tail") {
			t.Fatalf("redial %v, want since=5", q)
		}
	}
}

// TestOverlappingResendIsDroppedOnce: an upstream that sends entries the
// link already forwarded (here: since ignored) costs no repeat.
func TestOverlappingResendIsDroppedOnce(t *testing.T) {
	f := newFakeLog(t, 1, 2, 3)
	mgr, m := newManager(t, f.srv.URL, nil)
	d := newDecoder(t)
	w := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 10})
	w.waitSeqs(t, 1, 2, 3)
	f.set(func(f *fakeLog) { f.ignoreSince = true })
	f.publish(4)
	w.waitSeqs(t, 1, 2, 3, 4)
	f.cut() // the redial gets 1..4 again
	f.publish(5)
	testwait.For(t, "a redial", func() bool { return len(f.dialed()) >= 2 && testutil.ToFloat64(m.Connected) == 1 })
	f.publish(6)
	w.waitSeqs(t, 1, 2, 3, 4, 5, 6)
	if got := testutil.ToFloat64(m.Dropped.WithLabelValues(DropRepeat)); got < 4 {
		t.Errorf("repeats dropped %v, want at least 4", got)
	}
}

// TestRecoveredFalseResetsThePosition: after a stream reset, coap-server
// says recovered:false and serves lower seqs; they are forwarded, and the
// ring restarts from them.
func TestRecoveredFalseResetsThePosition(t *testing.T) {
	f := newFakeLog(t, 100, 101)
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.Now = clk.Now })
	d := newDecoder(t)
	w := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 10})
	w.waitSeqs(t, 100, 101)
	f.set(func(f *fakeLog) { f.seqs = []uint64{1, 2} }) // a new stream
	f.cut()
	w.waitSeqs(t, 100, 101, 1, 2)
	if got, want := strings.Join(w.texts(), " "), "100 101 lost restored recovered:false 1 2"; got != want {
		t.Errorf("frames %q, want %q", got, want)
	}
	if got := testutil.ToFloat64(m.Resets); got != 1 {
		t.Errorf("resets %v, want 1", got)
	}
	f.publish(3)
	w.waitSeqs(t, 100, 101, 1, 2, 3)
	// The ring holds the new stream only, all of it, once the connection's
	// history is over (what since= may bring is unknown: HistoryBurst).
	clk.Add(11 * time.Second)
	w2 := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 50})
	w2.waitSeqs(t, 1, 2, 3)
	if n := len(f.dialed()); n != 2 {
		t.Errorf("%d dials, want the ring to answer tail=50 with all it holds", n)
	}
}

// TestGapWithinHistoryKeepsThePosition: a recovered:false after entries
// on the same connection (retention dropped some while coap-server sent
// history) is forwarded; the link keeps its position (a redial resumes
// after the last entry, it does not ask for everything again, which would
// repeat entries) and its ring no longer answers a since across the gap.
func TestGapWithinHistoryKeepsThePosition(t *testing.T) {
	f := newFakeLog(t, 1, 2, 3)
	mgr, m := newManager(t, f.srv.URL, nil)
	d := newDecoder(t)
	w := watchFrom(t, mgr, d, Resume{Mode: Since, N: 0})
	w.waitSeqs(t, 1, 2, 3)
	f.send(lostFrame)
	f.publish(6, 7)
	w.waitSeqs(t, 1, 2, 3, 6, 7)
	if got, want := strings.Join(w.texts(), " "), "1 2 3 recovered:false 6 7"; got != want {
		t.Fatalf("frames %q, want %q", got, want)
	}
	if got := testutil.ToFloat64(m.Resets); got != 0 {
		t.Errorf("resets %v, want 0: a gap is not a reset", got)
	}
	old := watchFrom(t, mgr, d, Resume{Mode: Since, N: 2})
	old.waitSeqs(t, 3, 6, 7)
	if q := f.dialed(); len(q) != 2 || q[1].Get("since") != "2" {
		t.Fatalf("dials %v, want a dedicated since=2", q)
	}
	testwait.For(t, "the dedicated link to merge", func() bool {
		return testutil.ToFloat64(m.Dedicated) == 0 && f.subscribers() == 1
	})
	dials := len(f.dialed())
	f.cut()
	testwait.For(t, "the redial", func() bool { return len(f.dialed()) > dials })
	if q := f.dialed()[dials]; q.Get("since") != "7" {
		t.Fatalf("redial %v, want since=7", q)
	}
	f.publish(8)
	w.waitSeqs(t, 1, 2, 3, 6, 7, 8)
	old.waitSeqs(t, 3, 6, 7, 8)
}

// TestFrameWithoutSeqMovesNoPosition: a status without seq is forwarded and
// kept out of the ring; the reconnect resumes after the last seq.
func TestFrameWithoutSeqMovesNoPosition(t *testing.T) {
	f := newFakeLog(t, 5)
	mgr, _ := newManager(t, f.srv.URL, nil)
	d := newDecoder(t)
	w := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 1})
	w.waitSeqs(t, 5)
	f.send(`{"deviceId":"DEV","timestamp":"2026-12-01T12:00:00.000Z","type":"status","message":"note","data":{}}`)
	f.publish(6)
	w.waitSeqs(t, 5, 6)
	if _, other := w.seqs(); other != 1 {
		t.Fatalf("%d frames without seq, want 1", other)
	}
	w2 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 5})
	w2.waitSeqs(t, 6)
	if _, other := w2.seqs(); other != 0 {
		t.Error("the status without seq was kept in the ring")
	}
	f.cut()
	f.publish(7)
	w.waitSeqs(t, 5, 6, 7)
	if q := f.dialed(); q[len(q)-1].Get("since") != "6" {
		t.Errorf("redial %v, want since=6", q[len(q)-1])
	}
}

// TestLiveLinkThatSawNothingRedialsWithTail: a link opened live that
// forwarded no entry, on a coap-server that does not say its position,
// reconnects with tail=History, so entries published while it was away
// are not lost (up to History of them).
func TestLiveLinkThatSawNothingRedialsWithTail(t *testing.T) {
	f := newFakeLog(t)
	f.noPosition = true
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.History = 20 })
	d := newDecoder(t)
	w := watchFrom(t, mgr, d, LiveOnly)
	testwait.For(t, "the link connected", func() bool { return testutil.ToFloat64(m.Connected) == 1 })
	f.set(func(f *fakeLog) { f.down = true })
	f.cut()
	f.set(func(f *fakeLog) { f.seqs = []uint64{8}; f.down = false })
	w.waitSeqs(t, 8)
	q := f.dialed()
	if q[0].Has("tail") || q[0].Has("since") || q[len(q)-1].Get("tail") != "20" {
		t.Errorf("dials %v: want plain, then tail=20", q)
	}
}

// TestLiveLinkThatSawNothingResumesAfterItsPosition: a link opened live
// is told its position (4) when it connects; one that forwarded no entry
// then reconnects with since=4 and gets everything published while it was
// away. With tail=History (2) it got only the last two (10 12) and lost
// 6 8 without a word.
func TestLiveLinkThatSawNothingResumesAfterItsPosition(t *testing.T) {
	f := newFakeLog(t, 2, 4)
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.History = 2 })
	d := newDecoder(t)
	w := watchFrom(t, mgr, d, LiveOnly)
	testwait.For(t, "the position", func() bool { return testutil.ToFloat64(m.Positions) == 1 })
	f.set(func(f *fakeLog) { f.down = true })
	f.cut()
	f.set(func(f *fakeLog) { f.seqs = evens(2, 12); f.down = false })
	w.waitSeqs(t, 6, 8, 10, 12)
	if q := f.dialed(); q[len(q)-1].Get("since") != "4" {
		t.Errorf("redial %v, want since=4", q[len(q)-1])
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, fr := range w.frames {
		if data, _ := fr["data"].(map[string]any); data["position"] != nil {
			t.Errorf("forwarded %v: the position is the link's, not the browser's", fr)
		}
	}
}

// TestPositionEndsTheHistoryBurst: once coap-server has said where a
// connection's history ends, a new watcher needs room for its own answer
// only, and a tail is answered from the ring at once (the clock never
// moves here: without the position, both wait out HistoryBurst).
func TestPositionEndsTheHistoryBurst(t *testing.T) {
	f := newFakeLog(t, evens(2, 20)...)
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.Now = clk.Now })
	d := newDecoder(t)
	w1 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 10})
	w1.waitSeqs(t, evens(12, 20)...)
	testwait.For(t, "the position", func() bool { return testutil.ToFloat64(m.Positions) == 1 })
	w2 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 16})
	w2.waitSeqs(t, 18, 20)
	if w2.backlog != 2 {
		t.Errorf("second watcher's backlog %d, want 2 (its answer)", w2.backlog)
	}
	w3 := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 3})
	w3.waitSeqs(t, 16, 18, 20)
	if q := f.dialed(); len(q) != 1 {
		t.Errorf("dials %v: the tail should come from the ring", q)
	}
}

// TestConcurrentStartsNoGapNoRepeat: watchers start (since, tail, live)
// while entries stream in; each must see a gapless run of the log, in
// order, ending with the last entry.
func TestConcurrentStartsNoGapNoRepeat(t *testing.T) {
	const total = 600
	f := newFakeLog(t)
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.History = 50; c.MaxDevices = 100; c.MergeEvery = 5 * time.Millisecond })
	d := newDecoder(t)
	first := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 0})
	_ = first
	log := make([]uint64, 0, total)
	for i := range total {
		log = append(log, uint64(3*i+1))
	}
	type started struct {
		r Resume
		w *logWatcher
	}
	var ws []started
	done := make(chan struct{})
	var published atomic.Int64
	go func() {
		defer close(done)
		for i, s := range log {
			f.publish(s)
			published.Store(int64(i + 1))
			if i%50 == 0 {
				time.Sleep(time.Millisecond) // let starts interleave
			}
		}
	}()
	rng := rand.New(rand.NewPCG(1, 2))
	for range 40 {
		var r Resume
		switch rng.IntN(3) {
		case 0:
			// A position already published (beyond it is a reset).
			r = Resume{Mode: Since, N: uint64(rng.Int64N(max(1, 3*published.Load()-1)))}
		case 1:
			r = Resume{Mode: Tail, N: uint64(rng.IntN(80))}
		}
		ws = append(ws, started{r, watchFrom(t, mgr, d, r)})
		time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
	}
	<-done
	// Every dedicated link joins the shared one; one more entry then
	// reaches everybody once, through the one upstream connection.
	testwait.For(t, "every dedicated link to merge", func() bool {
		return testutil.ToFloat64(m.Dedicated) == 0 && f.subscribers() == 1
	})
	t.Logf("starts: ring %v, dedicated %v; merged %v",
		testutil.ToFloat64(m.Starts.WithLabelValues(StartRing)), testutil.ToFloat64(m.Starts.WithLabelValues(StartDedicated)),
		testutil.ToFloat64(m.Merges.WithLabelValues(MergeJoined)))
	f.publish(3*total + 1)
	log = append(log, 3*total+1)
	for i, s := range ws {
		var got []uint64
		for deadline := time.Now().Add(10 * time.Second); ; {
			got, _ = s.w.seqs()
			if len(got) > 0 && got[len(got)-1] == log[len(log)-1] || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if len(got) == 0 {
			t.Fatalf("watcher %d (%s) got nothing", i, s.r)
		}
		at := slices.Index(log, got[0])
		if at < 0 || !slices.Equal(got, log[at:]) {
			t.Fatalf("watcher %d (%s): not a gapless run of the log ending at its end: %v", i, s.r, got)
		}
		if s.r.Mode == Since && at > 0 && log[at-1] > s.r.N {
			t.Errorf("watcher %d (%s) starts at %d: missed %d", i, s.r, got[0], log[at-1])
		}
		if s.r.Mode == Since && got[0] <= s.r.N {
			t.Errorf("watcher %d (%s) got %d", i, s.r, got[0])
		}
	}
}

// TestNoHistory (RELAY_HISTORY=0): nothing is kept; a later tail gets a
// dedicated link, a since at the newest position needs nothing kept.
func TestNoHistory(t *testing.T) {
	f := newFakeLog(t, 1, 2, 3)
	mgr, m := newManager(t, f.srv.URL, func(c *Config) { c.History = -1 })
	d := newDecoder(t)
	w1 := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 2})
	w1.waitSeqs(t, 2, 3)
	w2 := watchFrom(t, mgr, d, Resume{Mode: Since, N: 3})
	w3 := watchFrom(t, mgr, d, Resume{Mode: Tail, N: 1})
	w3.waitSeqs(t, 3)
	if got := testutil.ToFloat64(m.Starts.WithLabelValues(StartDedicated)); got != 1 {
		t.Errorf("dedicated starts %v, want 1 (the tail)", got)
	}
	f.publish(4)
	w1.waitSeqs(t, 2, 3, 4)
	w2.waitSeqs(t, 4)
	w3.waitSeqs(t, 3, 4)
	if got := testutil.ToFloat64(m.HistoryBytes); got != 0 {
		t.Errorf("history bytes %v, want 0", got)
	}
}
