package upstream

import (
	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

// ring is a link's history: its most recent frames with a seq, in seq
// order, bounded in entries and in bytes, plus what it knows about how
// complete it is. It is not safe for concurrent use (the link's lock
// guards it).
type ring struct {
	maxEntries int
	maxBytes   int

	buf   []ringEntry // circular, len(buf) == maxEntries once grown
	start int         // index of the oldest entry
	n     int
	bytes int

	// floorOK: the ring holds every entry of the device with a seq in
	// (floor, top], where top is the newest seq the link forwarded (or,
	// before the first one, floor itself).
	floor   uint64
	floorOK bool
	// whole: the ring holds every entry the link was sent since a
	// tail=depth request (nothing evicted since), so a tail up to depth is
	// answered by all of it even when it holds fewer.
	whole bool
	depth uint64
}

// Sizes in the ring are what a frame costs held (wspeer.FrameCost: its
// JSON and the prepared message around it, the ring slot included), so
// its byte bound is a bound on memory.

// frame is an encoded frame and its cost in bytes (wspeer.FrameCost), the
// unit of the ring's bound and of a browser's queue.
type frame struct {
	pm   *websocket.PreparedMessage
	cost int
}

func newFrame(pm *websocket.PreparedMessage, jsonLen int) frame {
	return frame{pm, wspeer.FrameCost(jsonLen)}
}

type ringEntry struct {
	seq uint64
	frame
}

// evicted is how much a push pushed out.
type evicted struct{ entries int }

func newRing(maxEntries, maxBytes int) ring {
	return ring{maxEntries: maxEntries, maxBytes: maxBytes}
}

// push appends the newest entry (seq larger than every held one) and
// evicts the oldest ones beyond the bounds.
func (r *ring) push(seq uint64, f frame) evicted {
	size := f.cost
	if !r.floorOK {
		// The first entry seen: every later one will be seen too.
		r.floor, r.floorOK = seq-1, true
	}
	var ev evicted
	if r.maxEntries <= 0 || size > r.maxBytes {
		// Kept nowhere: the ring now covers nothing below seq.
		ev.entries = r.n
		r.clearEntries()
		r.floor, r.whole = seq, false
		return ev
	}
	for r.n > 0 && (r.n >= r.maxEntries || r.bytes+size > r.maxBytes) {
		old := r.buf[r.start]
		r.buf[r.start] = ringEntry{}
		r.start = (r.start + 1) % len(r.buf)
		r.n--
		r.bytes -= old.cost
		r.floor, r.whole = old.seq, false
		ev.entries++
	}
	if len(r.buf) < r.maxEntries && r.n == len(r.buf) {
		// Grow lazily: most links hold a few entries, not maxEntries.
		grown := make([]ringEntry, min(max(2*len(r.buf), 8), r.maxEntries))
		for i := range r.n {
			grown[i] = r.buf[(r.start+i)%len(r.buf)]
		}
		r.buf, r.start = grown, 0
	}
	r.buf[(r.start+r.n)%len(r.buf)] = ringEntry{seq: seq, frame: f}
	r.n++
	r.bytes += size
	return ev
}

func (r *ring) clearEntries() {
	clear(r.buf)
	r.start, r.n, r.bytes = 0, 0, 0
}

// reset forgets everything (a stream reset upstream); it returns the
// bytes released.
func (r *ring) reset() int {
	b := r.bytes
	r.clearEntries()
	r.floor, r.floorOK, r.whole, r.depth = 0, false, false, 0
	return b
}

// at is the i-th oldest entry.
func (r *ring) at(i int) ringEntry { return r.buf[(r.start+i)%len(r.buf)] }

// since returns the held entries with a seq above s, oldest first, and
// whether that is every such entry up to top (the newest seq forwarded,
// 0 when none was).
func (r *ring) since(s, top uint64) ([]frame, bool) {
	if !r.floorOK || s < r.floor || s > max(top, r.floor) {
		return nil, false
	}
	var out []frame
	for i := range r.n {
		if e := r.at(i); e.seq > s {
			out = append(out, e.frame)
		}
	}
	return out, true
}

// tail returns the newest n held entries, oldest first, and whether that
// answers tail=n: the ring holds n entries, or everything since a tail of
// at least n.
func (r *ring) tail(n uint64) ([]frame, bool) {
	if uint64(r.n) < n && !(r.whole && n <= r.depth) {
		return nil, false
	}
	k := int(min(n, uint64(r.n)))
	out := make([]frame, 0, k)
	for i := r.n - k; i < r.n; i++ {
		out = append(out, r.at(i).frame)
	}
	return out, true
}
