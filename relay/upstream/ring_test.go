package upstream

import (
	"slices"
	"testing"

	"github.com/gorilla/websocket"
)

// seqsOf maps prepared frames back to the seqs they were pushed with.
func seqsOf(t *testing.T, byPM map[*websocket.PreparedMessage]uint64, frames []frame) []uint64 {
	t.Helper()
	out := []uint64{}
	for _, f := range frames {
		s, ok := byPM[f.pm]
		if !ok {
			t.Fatal("frame not pushed")
		}
		out = append(out, s)
	}
	return out
}

func TestRingBoundsAndCoverage(t *testing.T) {
	byPM := map[*websocket.PreparedMessage]uint64{}
	push := func(r *ring, seq uint64, size int) evicted {
		pm, _ := websocket.NewPreparedMessage(websocket.TextMessage, []byte("x"))
		byPM[pm] = seq
		return r.push(seq, frame{pm, size})
	}
	r := newRing(3, 1000)
	if _, ok := r.since(0, 0); ok {
		t.Fatal("an empty ring that never saw an entry answered since")
	}
	// Seqs of one device are increasing, not consecutive.
	for _, s := range []uint64{10, 12, 15} {
		push(&r, s, 100)
	}
	for _, tc := range []struct {
		since uint64
		want  []uint64
		ok    bool
	}{
		{8, nil, false},                 // entries between 8 and 10 may exist: unknown
		{9, []uint64{10, 12, 15}, true}, // the first seen entry was 10: nothing in (9, 10)
		{11, []uint64{12, 15}, true},
		{15, []uint64{}, true},
		{16, nil, false}, // beyond the newest forwarded: coap-server decides
	} {
		got, ok := r.since(tc.since, 15)
		if ok != tc.ok || (ok && !slices.Equal(seqsOf(t, byPM, got), tc.want)) {
			t.Errorf("since(%d) = %v %v, want %v %v", tc.since, seqsOf(t, byPM, got), ok, tc.want, tc.ok)
		}
	}
	if ev := push(&r, 20, 100); ev.entries != 1 {
		t.Fatalf("evicted %d, want 1", ev.entries)
	}
	if _, ok := r.since(9, 20); ok {
		t.Error("since(9) answered after 10 was evicted")
	}
	if got, ok := r.since(10, 20); !ok || !slices.Equal(seqsOf(t, byPM, got), []uint64{12, 15, 20}) {
		t.Errorf("since(10) = %v %v", seqsOf(t, byPM, got), ok)
	}
	// Tail: the newest n, while the ring holds n.
	if got, ok := r.tail(2); !ok || !slices.Equal(seqsOf(t, byPM, got), []uint64{15, 20}) {
		t.Errorf("tail(2) = %v %v", seqsOf(t, byPM, got), ok)
	}
	if _, ok := r.tail(4); ok {
		t.Error("tail(4) answered by a ring of 3")
	}
	// Byte bound (1000): a 900-byte entry pushes out the oldest two.
	if ev := push(&r, 21, 900); ev.entries != 2 || r.n != 2 || r.bytes != 1000 {
		t.Errorf("after a large entry: evicted %d, held %d, %d bytes", ev.entries, r.n, r.bytes)
	}
	// An entry over the byte bound is kept nowhere; coverage moves past it.
	push(&r, 22, 2000)
	if r.n != 0 || r.bytes != 0 {
		t.Errorf("oversized entry kept: %d entries, %d bytes", r.n, r.bytes)
	}
	if got, ok := r.since(22, 22); !ok || len(got) != 0 {
		t.Errorf("since(22) = %v %v", got, ok)
	}
	if _, ok := r.since(21, 22); ok {
		t.Error("since(21) answered though 22 was not kept")
	}
	if b := r.reset(); b != 0 || r.floorOK {
		t.Errorf("reset: %d bytes, floorOK %v", b, r.floorOK)
	}
}

func TestRingWholeAnswersAnyTailUpToItsDepth(t *testing.T) {
	r := newRing(100, 1<<20)
	r.whole, r.depth = true, 50 // opened with tail=50, coap-server had 2 entries
	for _, s := range []uint64{3, 9} {
		pm, _ := websocket.NewPreparedMessage(websocket.TextMessage, []byte("x"))
		r.push(s, frame{pm, 10})
	}
	if got, ok := r.tail(50); !ok || len(got) != 2 {
		t.Errorf("tail(50) = %d %v, want all 2", len(got), ok)
	}
	if _, ok := r.tail(51); ok {
		t.Error("tail(51) answered by a ring opened with tail=50")
	}
	if got, ok := r.tail(0); !ok || len(got) != 0 {
		t.Errorf("tail(0) = %d %v", len(got), ok)
	}
}

func TestRingGrowsLazily(t *testing.T) {
	r := newRing(1000, 1<<30)
	pm, _ := websocket.NewPreparedMessage(websocket.TextMessage, []byte("x"))
	r.push(1, frame{pm, 1})
	if cap(r.buf) > 8 {
		t.Errorf("one entry allocated %d slots", cap(r.buf))
	}
	for s := uint64(2); s <= 1500; s++ {
		r.push(s, frame{pm, 1})
	}
	if r.n != 1000 || r.at(0).seq != 501 || r.at(999).seq != 1500 || len(r.buf) != 1000 {
		t.Errorf("n %d, oldest %d, newest %d, slots %d", r.n, r.at(0).seq, r.at(999).seq, len(r.buf))
	}
}
