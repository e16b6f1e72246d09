package stream

import (
	"sync"
	"time"
)

// IDBytes is what the embedded server holds in memory for each message
// published with a Nats-Msg-Id, for the stream's whole Duplicates window:
// the ID, its entry in the stream's dedup map and the map's share.
// Measured 86–111 B on average on nats-server v2.15 for the 22-character
// IDs of IDOf, 147 B in the worst round, depending on where the map is in
// its growth (TestMsgIDHeapCost checks the bound); rounded up. (Hex IDs of
// 32 characters took 124–159 B.)
const IDBytes = 160

// idShare is the part of the process's memory (memlimit) that the
// embedded server's message IDs may take by default: 1/4, 100 MiB at
// GOMEMLIMIT=400MiB, 655,360 IDs: as many uplinks (one ID each, their
// live-log entry's; UPLINKS batches have none) within the 250 s
// window, 2,621/s sustained. With the other shares (DTLS sessions 1/2 at most, Dedup 1/16,
// the datagram queue 1/64) the worst case leaves a sixth for the rest.
const idShare = 4

// idBudget bounds the message IDs published within the Duplicates window,
// so that what a flood of distinct uplinks makes the embedded server hold
// is bounded in bytes (nats-server has no such limit of its own: its
// dedup map grows with the publish rate, and it forgets an ID a window
// after its publish). It counts in slots of window/idSlots and keeps
// idSlots+1 of them: an ID leaves the count only once its whole slot is
// more than a window old, so the count never undercounts what the server
// still holds. Taking is O(1) amortised: each slot is cleared once a pass.
type idBudget struct {
	mu     sync.Mutex
	max    int64
	slot   time.Duration
	counts [idSlots + 1]int64
	held   int64
	newest int64 // the slot (time/slot) counts was last advanced to
}

const idSlots = 64

func newIDBudget(maxIDs int64, window time.Duration) *idBudget {
	return &idBudget{max: maxIDs, slot: max(window/idSlots, time.Millisecond)}
}

// take counts n IDs published at now, or reports false, counting none,
// when that would put more than max within the window.
func (b *idBudget) take(now time.Time, n int64) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(now.UnixNano() / int64(b.slot))
	if b.held+n > b.max {
		return false
	}
	b.counts[b.newest%(idSlots+1)] += n
	b.held += n
	return true
}

// advance moves to slot s, dropping the counts of the slots it reuses:
// they are a whole window old.
func (b *idBudget) advance(s int64) {
	if s <= b.newest {
		return // the same slot, or a clock that stepped back: keep counting in the newest
	}
	if s-b.newest > idSlots {
		b.counts = [idSlots + 1]int64{}
		b.held = 0
	} else {
		for i := b.newest + 1; i <= s; i++ {
			b.held -= b.counts[i%(idSlots+1)]
			b.counts[i%(idSlots+1)] = 0
		}
	}
	b.newest = s
}

// Held is the number of IDs counted within the window, and the bound.
func (b *idBudget) state() (held, maxIDs int64) {
	if b == nil {
		return 0, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held, b.max
}
