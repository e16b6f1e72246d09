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
