package hub

import (
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// counting is a Sender that takes up to room frames.
type counting struct {
	n    atomic.Int64
	room int64
}

func (c *counting) Send(*Frame) bool {
	if c.n.Load() >= c.room {
		return false
	}
	c.n.Add(1)
	return true
}

func TestPublishRoutesByDevice(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	h := New(m)
	a, b, all := &counting{room: 100}, &counting{room: 100}, &counting{room: 100}
	subA := h.Subscribe(a, []string{"A"})
	h.Subscribe(b, []string{"B", "C"})
	h.Subscribe(all, nil)
	frame, _ := NewFrame(1, []byte(`{}`))
	for _, d := range []string{"A", "B", "C", "D", "A"} {
		h.Publish(d, frame)
	}
	if a.n.Load() != 2 || b.n.Load() != 2 || all.n.Load() != 5 {
		t.Fatalf("a=%d b=%d all=%d, want 2 2 5", a.n.Load(), b.n.Load(), all.n.Load())
	}
	if h.Len() != 3 || testutil.ToFloat64(m.Subscribers) != 3 {
		t.Fatalf("Len=%d gauge=%v, want 3", h.Len(), testutil.ToFloat64(m.Subscribers))
	}
	subA.Close()
	subA.Close() // idempotent
	h.Publish("A", frame)
	if a.n.Load() != 2 || h.Len() != 2 || testutil.ToFloat64(m.Subscribers) != 2 {
		t.Fatalf("after Close: a=%d Len=%d gauge=%v", a.n.Load(), h.Len(), testutil.ToFloat64(m.Subscribers))
	}
	if len(h.byDevice["A"]) != 0 {
		t.Fatal("closed subscription left an empty device set behind")
	}
}

func TestFullSubscriberIsCounted(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	h := New(m)
	full := &counting{room: 1}
	h.Subscribe(full, []string{"A"})
	frame, _ := NewFrame(1, []byte(`{}`))
	if n := h.Publish("A", frame); n != 1 {
		t.Fatalf("first publish delivered %d", n)
	}
	if n := h.Publish("A", frame); n != 0 {
		t.Fatalf("second publish delivered %d", n)
	}
	if got := testutil.ToFloat64(m.Dropped); got != 1 {
		t.Fatalf("dropped = %v, want 1", got)
	}
}

// recording keeps the seq of every frame it is sent.
type recording struct{ seqs []uint64 }

func (r *recording) Send(f *Frame) bool { r.seqs = append(r.seqs, f.Seq); return true }

// A retransmission report that overtakes its uplink's entry (it travels on
// core NATS) is held until that entry went out.
func TestNoticeWaitsForItsEntry(t *testing.T) {
	h := New(NewMetrics(prometheus.NewRegistry()))
	r := &recording{}
	h.Subscribe(r, []string{"D"})
	notice := []byte(`{"deviceId":"D","type":"status","data":{"retransmission":{"of_seq":7}}}`)
	h.Feed(0, "D", notice)
	if len(r.seqs) != 0 {
		t.Fatalf("notice about 7 delivered before 7: %v", r.seqs)
	}
	h.Feed(7, "D", []byte(`{"deviceId":"D","type":"uplink"}`))
	h.Feed(0, "D", notice) // a later copy: 7 is out, no wait
	if want := []uint64{7, 0, 0}; len(r.seqs) != 3 || r.seqs[0] != 7 || r.seqs[1] != 0 || r.seqs[2] != 0 {
		t.Fatalf("delivered %v, want %v", r.seqs, want)
	}
}

// A notice about an entry from before the feed started (logged before a
// restart, or while the feed was stopped) goes out at once: the feed
// will never deliver that entry. One held already is released.
func TestNoticeAboutAnEntryBeforeTheFeedGoesAtOnce(t *testing.T) {
	h := New(NewMetrics(prometheus.NewRegistry()))
	r := &recording{}
	h.Subscribe(r, []string{"D"})
	held := []byte(`{"deviceId":"D","type":"status","data":{"retransmission":{"of_seq":5}}}`)
	h.Feed(0, "D", held) // before the feed says where it starts
	h.FeedFrom(9)
	h.Feed(0, "D", []byte(`{"deviceId":"D","type":"status","data":{"retransmission":{"of_seq":9}}}`))
	h.Feed(0, "D", []byte(`{"deviceId":"D","type":"status","data":{"retransmission":{"of_seq":10}}}`))
	if len(r.seqs) != 2 {
		t.Fatalf("delivered %d notices, want 2 (about 5 and 9; 10 waits for its entry)", len(r.seqs))
	}
}
