package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/httpapi"
	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// floodingHistory is a retained log in memory whose first Read lets more
// live entries go by than a subscriber's gate holds (an instance busy
// while the history is read): the server then reads what it missed from
// the log again.
type floodingHistory struct {
	hub   *hub.Hub
	flood int
	pad   int // bytes added to each entry's message

	mu    sync.Mutex
	log   []uint64 // seqs of device D, 1..len
	reads int
}

func (f *floodingHistory) LivePosition(context.Context) (stream.Position, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return stream.Position{First: 1, Last: uint64(len(f.log))}, nil
}

func (f *floodingHistory) TailStart(context.Context, string, int, uint64) (uint64, error) {
	return 1, nil
}

func (f *floodingHistory) Read(_ context.Context, cursors []stream.Cursor, upto uint64, fn stream.ReadFunc) error {
	f.mu.Lock()
	f.reads++
	if f.reads == 1 {
		for range f.flood {
			seq := uint64(len(f.log) + 1)
			f.log = append(f.log, seq)
			f.mu.Unlock()
			f.hub.Feed(seq, "D", f.entry(seq))
			f.mu.Lock()
		}
	}
	log := append([]uint64(nil), f.log...)
	f.mu.Unlock()
	for _, seq := range log {
		if seq >= cursors[0].From && seq <= upto {
			if err := fn(seq, "D", f.entry(seq)); err != nil {
				return err
			}
		}
	}
	return nil
}

func entryJSON(seq uint64) []byte {
	return fmt.Appendf(nil, `{"deviceId":"D","type":"uplink","message":"Received uplink #%d"}`, seq)
}

func (f *floodingHistory) entry(seq uint64) []byte {
	if f.pad == 0 {
		return entryJSON(seq)
	}
	return fmt.Appendf(nil, `{"deviceId":"D","type":"uplink","message":"Received uplink #%d %s"}`, seq, strings.Repeat("x", f.pad))
}

// TestSinceAfterGateOverflowRepeatsNothing: a subscriber resuming with
// since=5, while more live entries go by than its gate holds, gets 6, 7, …
// once each and in order: the server reads what the gate dropped from the
// log, from where the subscriber is, not from the start of the log (it
// read from position 1 when nothing had been sent yet, repeating 1–5).
func TestSinceAfterGateOverflowRepeatsNothing(t *testing.T) {
	hist := &floodingHistory{flood: 1100, log: []uint64{1, 2, 3, 4, 5}}
	readFloodSince5(t, hist)
}

// readFloodSince5 subscribes with since=5 to a server over hist and
// checks that every entry after 5 of its flood comes once, in order.
func readFloodSince5(t *testing.T, hist *floodingHistory) {
	t.Helper()
	const token = "t0123456789abcdef"
	reg := prometheus.NewRegistry()
	h := hub.New(hub.NewMetrics(reg))
	hist.hub = h
	api := &httpapi.Server{Hub: h, History: hist, Token: token, Gatherer: reg, Logger: slog.New(slog.DiscardHandler)}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?deviceId=D&since=5",
		http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for want := uint64(6); want <= uint64(5+hist.flood); want++ {
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for seq %d: %v", want, err)
		}
		var f struct{ Seq uint64 }
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("frame %.100q: %v", b, err)
		}
		if f.Seq != want {
			t.Fatalf("got seq %d, want %d (since=5: each later entry once, in order)", f.Seq, want)
		}
	}
}

// TestLargeFramesPastTheGatesBytesAreReadAgain: 20 live entries of 60 KiB
// (another version's, up to the stream's 64 KiB) go by while a
// subscriber's history is read: far fewer than the 1,024 frames its gate
// holds, but more bytes than its 1 MiB. The gate lets them go and the
// server reads them from the stream again (a second Read); the subscriber
// gets each once, in order. The gate held them all (1,024 such: 64 MiB).
func TestLargeFramesPastTheGatesBytesAreReadAgain(t *testing.T) {
	hist := &floodingHistory{flood: 20, pad: 60 << 10, log: []uint64{1, 2, 3, 4, 5}}
	readFloodSince5(t, hist)
	hist.mu.Lock()
	defer hist.mu.Unlock()
	if hist.reads != 2 {
		t.Fatalf("the log was read %d times, want 2: the frames past the gate's bytes read again", hist.reads)
	}
}

// droppingHistory is the real retained log whose device A sends more
// entries while a subscriber's history is read, so that LIVELOG_PER_DEVICE
// drops some the reader has not fetched yet; then a live entry goes by.
// With feed, each of those entries goes by live too, as the instance's
// feed sends it; with first, they come before the first Read starts
// rather than after its first entry.
type droppingHistory struct {
	*stream.Engine
	hub         *hub.Hub
	more        int
	feed, first bool
	once        sync.Once
}

func (d *droppingHistory) Read(ctx context.Context, cursors []stream.Cursor, upto uint64, fn stream.ReadFunc) error {
	more := func() {
		for range d.more {
			s, _, err := d.LogJSON(ctx, "A", []byte(`{"deviceId":"A"}`), "")
			if err != nil {
				panic(err)
			}
			if d.feed {
				d.hub.Feed(s, "A", []byte(`{"deviceId":"A"}`))
			}
		}
		d.hub.Feed(100000, "A", []byte(`{"deviceId":"A","type":"uplink","message":"live"}`))
	}
	if d.first {
		d.once.Do(more)
		return d.Engine.Read(ctx, cursors, upto, fn)
	}
	return d.Engine.Read(ctx, cursors, upto, func(seq uint64, dev string, data []byte) error {
		d.once.Do(more)
		return fn(seq, dev, data)
	})
}

// TestSinceTellsOfEntriesDroppedWhileItsHistoryIsRead: retention may drop
// entries after since while they are being sent (a busy device at
// LIVELOG_PER_DEVICE): the subscriber gets recovered:false where they were,
// not a silent gap. It got 11–74, 81–150 and nothing else before.
func TestSinceTellsOfEntriesDroppedWhileItsHistoryIsRead(t *testing.T) {
	e := openLog(t, stream.Config{LivePerDevice: 200}, "A", 150)
	_, ws := subscribe(t, func(h *hub.Hub) httpapi.History {
		return &droppingHistory{Engine: e, hub: h, more: 130} // 280 entries: 1–80 go, 75–80 not yet fetched
	}, "deviceId=A&since=10")
	if got, want := framesUntil(t, ws, 100000), "11-74 recovered:false 81-150"; got != want {
		t.Fatalf("frames %s, want %s", got, want)
	}
}

// TestResetSinceAfterGateOverflowSkipsNothing: since=500 on a stream that
// was reset (its newest is 100) gets recovered:false, then all of it; when
// more live entries go by meanwhile than the gate holds (1,200) and the
// stream passes 500, the re-read goes on after what was sent. It went on
// after since, skipping 101–500 without a word.
func TestResetSinceAfterGateOverflowSkipsNothing(t *testing.T) {
	// Room for all 1,300 of A's entries: nothing is dropped.
	e := openLog(t, stream.Config{LivePerDevice: 100_000}, "A", 100)
	_, ws := subscribe(t, func(h *hub.Hub) httpapi.History {
		return &droppingHistory{Engine: e, hub: h, more: 1200, feed: true}
	}, "deviceId=A&since=500")
	if got, want := framesUntil(t, ws, 1300), "recovered:false 1-1299"; got != want {
		t.Fatalf("frames %s, want %s", got, want)
	}
}

// TestGapToldOnceAcrossRereads: since=500 on a reset stream (its newest,
// 100, is B's) where A has nothing yet: recovered:false, and nothing of A.
// 1,200 entries of A go by meanwhile (the gate overflows), of which A
// keeps its last 1,000 (301–1,300): the re-read finds entries lost after
// since again with nothing sent in between, and tells it once, not twice.
func TestGapToldOnceAcrossRereads(t *testing.T) {
	e := openLog(t, stream.Config{}, "B", 100)
	_, ws := subscribe(t, func(h *hub.Hub) httpapi.History {
		return &droppingHistory{Engine: e, hub: h, more: 1200, feed: true, first: true}
	}, "deviceId=A&since=500")
	if got, want := framesUntil(t, ws, 1300), "recovered:false 301-1299"; got != want {
		t.Fatalf("frames %s, want %s", got, want)
	}
}

// TestDeviceNamedTwiceIsWatchedOnce: deviceId=A&deviceId=A is one device:
// one recovered:false, each entry once (the marker came twice).
func TestDeviceNamedTwiceIsWatchedOnce(t *testing.T) {
	e := openLog(t, stream.Config{}, "A", 3)
	// since=99 is beyond the newest position: recovered:false, then all.
	h, ws := subscribe(t, func(*hub.Hub) httpapi.History { return e }, "deviceId=A&deviceId=A&since=99")
	testwait.For(t, "the subscription", func() bool { return h.Len() == 1 })
	h.Feed(100000, "A", []byte(`{"deviceId":"A","type":"uplink","message":"live"}`))
	if got, want := framesUntil(t, ws, 100000), "recovered:false 1-3"; got != want {
		t.Fatalf("frames %s, want %s", got, want)
	}
}

// TestPositionEndsTheHistory: with position=1 the subscriber is told, once
// its history is sent, the position up to which it has every entry, also
// when no entry came: a since or tail answered, or a live start (the
// newest position when it arrived). The relay resumes after it.
func TestPositionEndsTheHistory(t *testing.T) {
	e := openLog(t, stream.Config{}, "A", 3)
	for query, want := range map[string]string{
		"deviceId=A&tail=2&position=1":  "2-3 position:3",
		"deviceId=A&since=1&position=1": "2-3 position:3",
		"deviceId=A&since=3&position=1": "position:3",
		"deviceId=A&position=1":         "position:3",
		"deviceId=B&tail=5&position=1":  "position:3",
		"deviceId=A&tail=2":             "2-3",
	} {
		h, ws := subscribe(t, func(*hub.Hub) httpapi.History { return e }, query)
		testwait.For(t, "the subscription", func() bool { return h.Len() == 1 })
		dev := strings.TrimPrefix(strings.Split(query, "&")[0], "deviceId=")
		h.Feed(100000, dev, fmt.Appendf(nil, `{"deviceId":%q,"type":"uplink","message":"live"}`, dev))
		if got := framesUntil(t, ws, 100000); got != want {
			t.Errorf("%s: frames %s, want %s", query, got, want)
		}
	}
}

// arrivingHistory is the real retained log where device A sends more
// entries (fed to the hub as an instance's feed does) just as the first
// subscriber's history starts: once the hub has the subscriber, on the
// first LivePosition after that.
type arrivingHistory struct {
	*stream.Engine
	hub  *hub.Hub
	more int
	once sync.Once
}

func (a *arrivingHistory) LivePosition(ctx context.Context) (stream.Position, error) {
	if a.hub.Len() > 0 {
		a.once.Do(func() {
			for range a.more {
				s, _, err := a.LogJSON(ctx, "A", []byte(`{"deviceId":"A"}`), "")
				if err != nil {
					panic(err)
				}
				a.hub.Feed(s, "A", []byte(`{"deviceId":"A"}`))
			}
		})
	}
	return a.Engine.LivePosition(ctx)
}

// TestTailThenEveryEntryAfterTheSubscription: tail=1 is the last entry
// before the subscriber came (1), then every entry published after it (2,
// 3), also those that arrive while its history is being read. It got 3
// alone: the tail counted back from the position read after the
// subscription, and 2, held live, was taken as sent.
func TestTailThenEveryEntryAfterTheSubscription(t *testing.T) {
	e := openLog(t, stream.Config{}, "A", 1)
	h, ws := subscribe(t, func(h *hub.Hub) httpapi.History { return &arrivingHistory{Engine: e, hub: h, more: 2} }, "deviceId=A&tail=1")
	h.Feed(100000, "A", []byte(`{"deviceId":"A","type":"uplink","message":"live"}`))
	if got, want := framesUntil(t, ws, 100000), "1-3"; got != want {
		t.Fatalf("frames %s, want %s", got, want)
	}
}

// openLog opens an embedded live log holding n entries of device.
func openLog(t *testing.T, cfg stream.Config, device string, n int) *stream.Engine {
	t.Helper()
	cfg.DataDir = t.TempDir()
	e, err := stream.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	for range n {
		if _, _, err := e.LogJSON(context.Background(), device, fmt.Appendf(nil, `{"deviceId":%q}`, device), ""); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// subscribe serves /ws on a hub of its own with the history history gives
// and opens a subscriber with query.
func subscribe(t *testing.T, history func(*hub.Hub) httpapi.History, query string) (*hub.Hub, *websocket.Conn) {
	t.Helper()
	const token = "t0123456789abcdef"
	reg := prometheus.NewRegistry()
	h := hub.New(hub.NewMetrics(reg))
	api := &httpapi.Server{Hub: h, History: history(h), Token: token, Gatherer: reg, Logger: slog.New(slog.DiscardHandler)}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?"+query,
		http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return h, ws
}

// framesUntil reads frames up to the one at seq stop and writes them as
// ranges: seqs, and recovered:false where it came.
func framesUntil(t *testing.T, ws *websocket.Conn, stop uint64) string {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	var got []string
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		var f struct {
			Seq  uint64
			Data struct {
				Recovered *bool
				Position  *uint64
			}
		}
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		switch {
		case f.Seq == stop:
			return ranges(got)
		case f.Seq > 0:
			got = append(got, fmt.Sprint(f.Seq))
		case f.Data.Recovered != nil && !*f.Data.Recovered:
			got = append(got, "recovered:false")
		case f.Data.Position != nil:
			got = append(got, fmt.Sprintf("position:%d", *f.Data.Position))
		default:
			got = append(got, string(b))
		}
	}
}

// ranges writes runs of consecutive seqs as from-to.
func ranges(frames []string) string {
	var out []string
	for i := 0; i < len(frames); {
		var from, to uint64
		if _, err := fmt.Sscan(frames[i], &from); err != nil {
			out = append(out, frames[i])
			i++
			continue
		}
		to, i = from, i+1
		for i < len(frames) && frames[i] == fmt.Sprint(to+1) {
			to, i = to+1, i+1
		}
		out = append(out, fmt.Sprintf("%d-%d", from, to))
	}
	return strings.Join(out, " ")
}

// lateHistory is a retained log of device D (1..5) while the instance's
// feed is behind it: during the first Read, the hub delivers entry 3 only
// now (a feed that lags the stream, e.g. just after a restart).
type lateHistory struct {
	floodingHistory
	once sync.Once
}

func (l *lateHistory) Read(ctx context.Context, cursors []stream.Cursor, upto uint64, fn stream.ReadFunc) error {
	l.once.Do(func() { l.hub.Feed(3, "D", entryJSON(3)) })
	return l.floodingHistory.Read(ctx, cursors, upto, fn)
}

// TestSinceSkipsALateEntryItHadSeen: a client resuming with since=5 (no
// position=1, so no position status moves the gate) is not sent entry 3,
// which the lagging feed delivers while its history is read; the first
// entry it gets is 6. Before, the gate started from position 0 when the
// history sent nothing, and repeated 3.
func TestSinceSkipsALateEntryItHadSeen(t *testing.T) {
	var hist *lateHistory
	h, ws := subscribe(t, func(h *hub.Hub) httpapi.History {
		hist = &lateHistory{floodingHistory: floodingHistory{hub: h, log: []uint64{1, 2, 3, 4, 5}}}
		return hist
	}, "deviceId=D&since=5")
	testwait.For(t, "entry 3 went by", func() bool {
		hist.mu.Lock()
		defer hist.mu.Unlock()
		return hist.reads > 0
	})
	h.Feed(6, "D", entryJSON(6))
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Seq uint64 }
	if err := json.Unmarshal(b, &f); err != nil || f.Seq != 6 {
		t.Fatalf("first frame %s, want seq 6 (since=5)", b)
	}
}
