package stream

import (
	"encoding/base64"
	"sync"
	"time"
)

// With storage on the embedded engine an uplink is answered once it is in
// UPLINKS and its live-log entry follows (LogBehind). RecoverEntries finds
// an entry a crash kept from being stored through its uplink, which waits
// in UPLINKS until the database has it. The ledger keeps that true: the
// storage consumer acknowledges (and so deletes) an UPLINKS message only
// once every entry of the uplinks it holds is resolved (stored, or failed
// and counted). Without it a busy storage, which writes what it fetched at
// once, could delete an uplink a few milliseconds after its answer while
// its entry still waited behind others (0.1 s with an fsync per message).
//
// An UPLINKS message is known by its stream position, an uplink by its key.
// A batch's position is learnt from its acknowledgement, so a message the
// storage fetched may belong to a publish whose acknowledgement this
// process has not read yet: every batch publish has a ticket, and the
// storage's wait also covers the publishes started before it fetched.
type ledger struct {
	mu      sync.Mutex
	changed *sync.Cond // on mu: broadcast when owed entries or publishes resolve

	owed    map[[16]byte]owed   // an uplink's key: where it is, how many entries it owes
	pending map[uint64]int      // an UPLINKS position: how many of its entries are owed
	tickets uint64              // batch publishes started
	open    map[uint64]struct{} // the tickets of those not resolved yet

	waiting  int   // storage acknowledgements waiting (tests)
	timeouts int64 // waits that gave up (mu)
}

// owed is what the ledger holds for one key: the position of the first
// UPLINKS message with it, and how many entries are owed for it (a copy
// accepted twice, after its answer left the table of recent answers,
// owes two, both counted at the first position).
type owed struct {
	seq uint64
	n   int
}

func newLedger() *ledger {
	l := &ledger{owed: make(map[[16]byte]owed), pending: make(map[uint64]int), open: make(map[uint64]struct{})}
	l.changed = sync.NewCond(&l.mu)
	return l
}

// start gives a batch publish about to begin its ticket.
func (l *ledger) start() uint64 {
	l.mu.Lock()
	t := l.tickets
	l.tickets++
	l.open[t] = struct{}{}
	l.mu.Unlock()
	return t
}

// published resolves ticket t: its batch is at position seq (0: it failed)
// with the uplinks of keys, whose entries are owed from now on.
func (l *ledger) published(t, seq uint64, keys [][16]byte) {
	l.mu.Lock()
	delete(l.open, t)
	if seq != 0 {
		for _, k := range keys {
			if k == ([16]byte{}) {
				continue // its caller gave up: no entry follows
			}
			o, ok := l.owed[k]
			if !ok {
				o.seq = seq
			}
			o.n++
			l.owed[k] = o
			l.pending[o.seq]++
		}
	}
	l.changed.Broadcast()
	l.mu.Unlock()
}

// settle records that the entry of the uplink with key id (IDOf) is
// resolved, or will never be logged; an id it does not owe is ignored, and
// so is everything without a ledger (nil).
func (l *ledger) settle(id string) {
	if l == nil {
		return
	}
	var k [16]byte
	if n, err := base64.RawURLEncoding.Decode(k[:], []byte(id)); err != nil || n != len(k) {
		return
	}
	l.settleKey(k)
}

func (l *ledger) settleKey(k [16]byte) {
	l.mu.Lock()
	if o, ok := l.owed[k]; ok {
		if o.n--; o.n > 0 {
			l.owed[k] = o
		} else {
			delete(l.owed, k)
		}
		if l.pending[o.seq]--; l.pending[o.seq] <= 0 {
			delete(l.pending, o.seq)
			l.changed.Broadcast()
		}
	}
	l.mu.Unlock()
}

// mark is what a storage fetch saw: the publishes started before it.
func (l *ledger) mark() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tickets
}

// wait returns once no publish started before mark is unresolved and no
// uplink at an UPLINKS position up to seq owes its entry, or after
// timeout. That is counted, and what is owed up to seq is forgotten, so
// that an entry never settled (a defect) costs one wait, not every later
// one; the message is acknowledged all the same: holding it would have it
// delivered, and stored, again.
func (l *ledger) wait(seq, mark uint64, timeout time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.clearLocked(seq, mark) {
		return true
	}
	expired := false
	t := time.AfterFunc(timeout, func() {
		l.mu.Lock()
		expired = true
		l.changed.Broadcast()
		l.mu.Unlock()
	})
	defer t.Stop()
	l.waiting++
	defer func() { l.waiting-- }()
	for !l.clearLocked(seq, mark) {
		if expired {
			l.timeouts++
			for k, o := range l.owed {
				if o.seq <= seq {
					delete(l.owed, k)
				}
			}
			for s := range l.pending {
				if s <= seq {
					delete(l.pending, s)
				}
			}
			return false
		}
		l.changed.Wait()
	}
	return true
}

func (l *ledger) clearLocked(seq, mark uint64) bool {
	for t := range l.open {
		if t < mark {
			return false
		}
	}
	for s := range l.pending {
		if s <= seq {
			return false
		}
	}
	return true
}

// waiters is how many storage acknowledgements are waiting.
func (l *ledger) waiters() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiting
}
