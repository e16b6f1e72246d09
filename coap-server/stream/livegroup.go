package stream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// On the embedded engine, live-log entries are made durable in groups
// (group commit), each still its own JetStream message: the contract's
// per-entry seq, the per-device subjects that serve tail and since, and
// the per-device retention need one message per entry. While a group waits
// for its acknowledgement, the entries of other callers collect in the
// next one. A group goes out as messages sent back to back on the publish
// connection, only the last with a reply subject, so the stream answers
// once per group: an acknowledgement costs the stream and both ends of
// the connection about 6 µs per message (BenchmarkLivePublish, "ack"
// against "noreply"). An entry never waits for a timer: at low load each
// one is a group of its own, acknowledged alone.
//
// Why one acknowledgement confirms the whole group. The server queues the
// messages of one connection for the stream in the order they were sent,
// and the stream numbers what it stores in that order. Nothing else
// publishes to LIVELOG on the embedded server: it has no listener, and
// every entry of this engine goes through these groups, sent one group
// after the other under one lock (a probe's barrier is sent outside it,
// but is never stored). So the messages stored
// between the previous group's last entry and this group's last are this
// group's others, and when the last's position is the previous last's plus
// the group's size, every one of them was stored, at the positions in
// between. When it is not (the stream dropped one without telling, as it
// does when its ingest queue is full), the messages in between are read
// back and matched to the group's entries (locate); an entry not found,
// or every other entry of a group whose predecessor's acknowledgement did
// not come, gets errUnconfirmed: whether it was stored is not known, as
// after an acknowledgement that never came. With NATS_URL other instances publish
// to the same stream, and every entry is acknowledged on its own (Log).
type liveGroups struct {
	e *Engine

	mu        sync.Mutex
	open      *liveGroup   // collecting; nil when none
	queued    []*liveGroup // full, waiting to be sent, oldest first
	inflight  int          // groups sent and not yet resolved, and probes running
	peak      int          // the most inflight has been
	peakAsync int          // the most async has been
	last      *liveGroup   // the group sent most recently
	async     int          // bytes of async entries in groups not yet resolved
	maxAsync  int          // the most async may be: maxAsyncBytes (tests lower it)
	maxBehind int          // the most for a LogBehind entry to join: maxBehindBytes
	idle      *sync.Cond   // on mu: signalled when a group is resolved
	hdr       nats.Header
	key       []string // hdr's KeyHeader value

	unconfirmed   int64 // entries that got errUnconfirmed (mu)
	sent, entries int64 // groups sent and their entries (mu)
	sentAgain     int64 // behind entries sent a second time (mu)
	located       int64 // groups whose entries were looked for (mu)
}

const (
	// liveInflight is how many groups may wait for their acknowledgement
	// at once; full groups are sent up to liveInflightFull. More wait, in
	// order, until one is resolved: entries the stream has not processed
	// yet wait in its queue, where their acknowledgement's time runs
	// (AckTimeout), so the groups in flight must be few enough for the
	// slowest stream to store within it: with an fsync per message
	// (NATS_SYNC_ALWAYS) about 3,000 entries a second, and 8 full groups
	// are 512 entries. Sending every full group at once let a backlog of
	// 10,000 entries time out there, and the groups after it with it.
	liveInflight     = 2
	liveInflightFull = 8
	// maxGroupEntries and maxGroupBytes bound one group.
	maxGroupEntries = 64
	maxGroupBytes   = 64 << 10
	// maxAsyncBytes bounds the entries nobody waits for (LogAsync,
	// LogBehind) held in groups: past it a LogAsync entry fails (counted),
	// as nats.go's async publishes did past their pending limit. 4 MiB is
	// about 10,000 uplink entries, a fifth of a second at this engine's
	// fastest.
	maxAsyncBytes = 4 << 20
	// maxBehindBytes: past it a LogBehind caller waits for room
	// instead, so that an entry lags its answer by no more than the
	// stream takes to store this much, about 330 entries: 3 ms at this
	// engine's fastest, 0.1 s with an fsync per message. Its uplink's
	// storage acknowledgement waits as long (ledger.go), so that a crash
	// meanwhile leaves the uplink in UPLINKS for RecoverEntries.
	maxBehindBytes = 128 << 10
)

// errUnconfirmed: an entry of a group whose acknowledgement does not show
// that every entry before the last was stored.
var errUnconfirmed = fmt.Errorf("%w: live-log entry sent, its storage not confirmed", ErrUnavailable)

// errAsyncFull: maxAsync bytes of entries nobody waits for are in groups.
var errAsyncFull = fmt.Errorf("%w: too many live-log entries already waiting", ErrUnavailable)

// errEntryTooLarge: an entry over MaxEntryBytes, which the stream would
// refuse without a word.
var errEntryTooLarge = errors.New("stream: live-log entry larger than its bound")

type liveGroup struct {
	data       []byte     // the entries' JSON, back to back
	parts      []livePart // one per entry, in the order sent
	prev       *liveGroup // sent just before this one; nil once resolved
	async      int        // async entries among parts
	asyncBytes int        // and their bytes
	done       chan struct{}

	// Set before done is closed.
	err     error  // the acknowledgement's: every entry's
	lastSeq uint64 // the last entry's position; 0 unless err == nil
	// known is the last position known stored when g was resolved: its
	// lastSeq, or, when it failed, its predecessor's known (0: none).
	known     uint64
	confirmed bool // every entry's position is known
	// found holds the positions of entries found in the stream when the
	// group was not confirmed (0: not found); nil when not looked for.
	found []uint64
	// searched: every message found could hold was read, so an entry not
	// found is not in the stream.
	searched bool
	// carry, when the group failed: its behind entries and those carried
	// to it, not found yet, for the next group to look for (resolve).
	carry []carried
}

// carried is a behind entry of a group whose acknowledgement never came.
type carried struct {
	part livePart
	data []byte
}

// entry is entry i's JSON.
func (g *liveGroup) entry(i int) []byte {
	start := 0
	if i > 0 {
		start = g.parts[i-1].end
	}
	return g.data[start:g.parts[i].end]
}

type livePart struct {
	subject string
	key     string // KeyHeader, "" for none
	end     int    // the entry is data[previous end:end]
	async   bool   // nobody waits for it (LogAsync, LogBehind)
	// done, for an async entry, gets its position once it is known
	// (LogBehind); it is not called for an entry that was not stored.
	done func(seq uint64)
	// behind: the ledger owes it (LogBehind); settled once resolved.
	behind bool
	// again: a behind entry sent a second time (see resolve).
	again bool
}

// result is entry i's position, or why it has none; g.done is closed.
func (g *liveGroup) result(i int) (uint64, error) {
	last := len(g.parts) - 1
	switch {
	case g.err != nil:
		return 0, g.err
	case i == last:
		return g.lastSeq, nil
	case !g.confirmed && (g.found == nil || g.found[i] == 0):
		return 0, errUnconfirmed
	case !g.confirmed:
		return g.found[i], nil
	}
	return g.lastSeq - uint64(last-i), nil
}

// addMode says who waits for an entry.
type addMode int

const (
	addWaited addMode = iota // its caller (Log)
	addBehind                // nobody: its uplink was answered (LogBehind)
	addFire                  // nobody (LogAsync)
	addAgain                 // a behind entry the stream dropped, once more (resolve)
)

// add puts one entry in the group being collected. A waited entry's
// caller waits for the group's outcome (or ctx) and gets the entry's
// position. Any other returns at once, or with errAsyncFull when too many
// bytes of such entries wait already; its failure is counted in
// asyncErrors, and done, when set, gets its position. A behind entry
// past maxBehind waits for room first (waitRoomLocked).
func (l *liveGroups) add(ctx context.Context, subject, key string, entry []byte, mode addMode, done func(uint64)) (uint64, error) {
	async := mode != addWaited
	// The stream's MaxMsgSize counts the header too: "NATS/1.0\r\n",
	// "Nbiot-Key: key\r\n" and "\r\n".
	if len(entry)+len(KeyHeader)+len(key)+16 > MaxEntryBytes {
		return 0, errEntryTooLarge
	}
	l.mu.Lock()
	bound := l.maxAsync // addAgain must not wait: the bound of LogAsync
	if mode == addBehind {
		bound = min(bound, l.maxBehind)
	}
	if async && l.async+len(entry) > bound && (mode != addBehind || !l.waitRoomLocked(len(entry), bound)) {
		waiting := l.async
		l.mu.Unlock()
		return 0, fmt.Errorf("%w (%d bytes)", errAsyncFull, waiting)
	}
	if g := l.open; g != nil && (len(g.parts) >= maxGroupEntries || len(g.data)+len(entry) > maxGroupBytes) {
		l.queued = append(l.queued, g) // full: next out
		l.open = nil
	}
	if l.open == nil {
		l.open = &liveGroup{data: make([]byte, 0, 4*len(entry)), done: make(chan struct{})}
	}
	g := l.open
	g.data = append(g.data, entry...)
	g.parts = append(g.parts, livePart{subject: subject, key: key, end: len(g.data), async: async, done: done, behind: mode == addBehind || mode == addAgain, again: mode == addAgain})
	i := len(g.parts) - 1
	if async {
		g.async++
		g.asyncBytes += len(entry)
		l.async += len(entry)
		l.peakAsync = max(l.peakAsync, l.async)
	}
	l.sendNextLocked()
	l.mu.Unlock()
	if async {
		return 0, nil
	}
	select {
	case <-g.done:
		return g.result(i)
	case <-ctx.Done():
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
}

// waitRoomLocked waits, l.mu held, until an entry of n bytes fits within
// bound, or nothing else waits (an entry larger than the bound goes
// alone), or 2 AckTimeouts passed (false): groups are resolved within one
// once sent. The caller is a LogBehind whose answer then waits, so that
// answers slow down to the pace the stream stores entries at (counted in
// BehindWaits).
func (l *liveGroups) waitRoomLocked(n, bound int) bool {
	l.e.behindWaits.Add(1)
	expired := false
	t := time.AfterFunc(2*l.e.cfg.AckTimeout, func() {
		l.mu.Lock()
		expired = true
		l.idle.Broadcast()
		l.mu.Unlock()
	})
	defer t.Stop()
	for l.async > 0 && l.async+n > bound {
		if expired {
			return false
		}
		l.idle.Wait()
	}
	return true
}

// sendNextLocked sends what may go now: the full groups, oldest first,
// while fewer than liveInflightFull are in flight, then the open one,
// while fewer than liveInflight are.
func (l *liveGroups) sendNextLocked() {
	for len(l.queued) > 0 && l.inflight < liveInflightFull {
		g := l.queued[0]
		l.queued[0] = nil
		l.queued = l.queued[1:]
		l.sendLocked(g)
	}
	if g := l.open; g != nil && len(l.queued) == 0 && l.inflight < liveInflight {
		l.open = nil
		l.sendLocked(g)
	}
}

// sendLocked sends g; l.mu is held, so that groups reach the connection
// whole and in the order l.last records.
func (l *liveGroups) sendLocked(g *liveGroup) {
	g.prev, l.last = l.last, g
	l.inflight++
	l.peak = max(l.peak, l.inflight)
	l.sent++
	l.entries += int64(len(g.parts))
	msg := nats.Msg{}
	start, n := 0, len(g.parts)
	var err error
	for i, p := range g.parts {
		msg.Subject, msg.Data, msg.Header = p.subject, g.data[start:p.end], nil
		if p.key != "" {
			l.key[0] = p.key
			msg.Header = l.hdr
		}
		start = p.end
		if i < n-1 {
			if err = l.e.nc.PublishMsg(&msg); err != nil {
				err = fmt.Errorf("%w: %v", ErrUnavailable, err)
				break
			}
			continue
		}
		var t ticket
		if t, err = l.e.acks.send(&msg, l.e.cfg.AckTimeout); err == nil {
			go l.await(g, t)
			return
		}
	}
	// Nothing to wait for: resolved at once, in order after its
	// predecessor like any other.
	go l.resolve(g, pubAck{}, err)
}

func (l *liveGroups) await(g *liveGroup, t ticket) {
	// Not a caller's context: the group is shared, and the sweeper bounds
	// the wait by AckTimeout.
	ack, err := l.e.acks.wait(context.Background(), t, l.e.cfg.AckTimeout)
	l.resolve(g, ack, err)
}

// resolve sets g's outcome once its predecessor's is known, then lets the
// next group go out.
//
// The behind entries of a group whose acknowledgement never came may be
// stored all the same, and their uplinks were answered 2.04: they are
// carried to the next group, whose acknowledgement shows where the stream
// stands, and looked for with its own entries (locate); when no group
// follows, a barrier does that instead (probe). Found, they are settled;
// certainly missing, sent once more; otherwise counted failed. Until then
// the ledger owes them, so that storage keeps their uplinks (for
// RecoverEntries, should the process die first). Their bytes no longer
// count against maxBehind: maxCarry bounds them.
func (l *liveGroups) resolve(g *liveGroup, ack pubAck, err error) {
	var prevSeq, known uint64
	var carry []carried // from a failed predecessor: to look for
	if p := g.prev; p != nil {
		<-p.done
		prevSeq, known = p.lastSeq, p.known
		l.mu.Lock() // a probe of p may take it too
		carry, p.carry = p.carry, nil
		l.mu.Unlock()
	}
	n := len(g.parts)
	var carryFound []uint64 // the positions of carry's entries (0: not found)
	looked, searched := false, false
	if err != nil {
		g.err = err
		g.known = known
	} else {
		g.lastSeq, g.known = ack.Sequence, ack.Sequence
		g.confirmed = n == 1 || (prevSeq != 0 && ack.Sequence-prevSeq == uint64(n))
		// After a group that failed (no acknowledgement within AckTimeout:
		// it may be stored all the same), the entries are looked for from
		// the last position known, so that one lost acknowledgement does
		// not cost the next group's entries too.
		if (!g.confirmed || len(carry) > 0) && known != 0 && ack.Sequence > known {
			var found []uint64
			found, searched = l.locate(known, ack.Sequence, carry, g)
			if found != nil {
				looked, carryFound = true, found[:len(carry)]
			}
			if !g.confirmed && found != nil {
				g.found, g.searched = found[len(carry):], searched
			}
		}
	}
	g.prev = nil          // resolved groups hold no chain of predecessors
	var dropped []carried // given up on: settled and counted failed
	if g.err != nil {
		for i, p := range g.parts {
			if p.behind {
				carry = append(carry, carried{p, g.entry(i)})
			}
		}
		if over := len(carry) - maxCarry; over > 0 {
			dropped, carry = carry[:over], carry[over:]
		}
		l.mu.Lock()
		g.carry, carry = carry, nil
		l.mu.Unlock()
	}
	close(g.done)
	// A behind entry that is certainly not in the stream (it dropped the
	// message: its ingest queue was full) is sent once more: its uplink was
	// answered 2.04, and no caller will send it again.
	again, dropped := l.sortCarried(carry, carryFound, searched, nil, dropped)
	missing := func(i int, p livePart) bool { // g's entry i, certainly not in the stream
		return p.behind && !p.again && g.searched && i < n-1 && g.found[i] == 0
	}
	for i, p := range g.parts {
		if p.done != nil {
			if seq, err := g.result(i); err == nil {
				p.done(seq)
			}
		}
		switch {
		case !p.behind || g.err != nil: // a failed group's are carried
		case missing(i, p):
			again = append(again, carried{p, g.entry(i)}) // owed until its second try is resolved
		default:
			l.e.ledger.settle(p.key) // stored or counted: storage may delete its uplink
		}
	}
	var failed, unconfirmed int64
	switch {
	case g.err != nil:
		for _, p := range g.parts {
			if p.async && !p.behind {
				failed++
			}
		}
	case !g.confirmed:
		// The entries not found: the async ones count as failed, the
		// others' callers were refused.
		for i, p := range g.parts[:n-1] {
			switch {
			case g.found != nil && g.found[i] != 0:
			case missing(i, p): // counted if its second try fails
			case p.async:
				failed++
			default:
				unconfirmed++
			}
		}
	}
	l.e.asyncErrors.Add(failed)
	// Before this group counts as resolved, so that a flush waits for
	// the second tries too.
	l.retry(again, dropped)
	l.mu.Lock()
	l.unconfirmed += unconfirmed
	if looked {
		l.located++
	}
	l.async -= g.asyncBytes
	// Nothing sent after a failed group with entries to look for: a
	// barrier shows where the stream stands instead, counted in flight
	// so that a flush waits for it.
	if len(g.carry) > 0 && l.last == g && l.open == nil && len(l.queued) == 0 {
		l.inflight++
		go l.probe(g)
	}
	l.inflight--
	l.sendNextLocked()
	l.idle.Broadcast()
	l.mu.Unlock()
}

// sortCarried sorts the carried entries once looked for (found: their
// positions, nil when not looked for; searched: every position read):
// each found is told its position and settled; one certainly missing goes
// to again, to be sent once more, unless it was a second try already;
// every other to dropped.
func (l *liveGroups) sortCarried(carry []carried, found []uint64, searched bool, again, dropped []carried) ([]carried, []carried) {
	for j, c := range carry {
		switch {
		case found != nil && found[j] != 0:
			if c.part.done != nil {
				c.part.done(found[j])
			}
			l.e.ledger.settle(c.part.key)
		case searched && !c.part.again:
			again = append(again, c)
		default:
			dropped = append(dropped, c)
		}
	}
	return again, dropped
}

// retry sends the entries of again once more and gives up on those of
// dropped: settled and counted failed.
func (l *liveGroups) retry(again, dropped []carried) {
	for _, c := range dropped {
		l.e.ledger.settle(c.part.key)
	}
	l.e.asyncErrors.Add(int64(len(dropped)))
	for _, c := range again {
		if _, err := l.add(context.Background(), c.part.subject, c.part.key, c.data, addAgain, c.part.done); err != nil {
			l.e.asyncErrors.Add(1)
			l.e.ledger.settle(c.part.key)
			continue
		}
		l.mu.Lock()
		l.sentAgain++
		l.mu.Unlock()
	}
}

// barrierStream is no stream's name (names have no spaces): a message
// expecting it is refused by LIVELOG without being stored, in its turn.
const barrierStream = "no stream"

// probe looks for the entries g carries, a failed group after which none
// was sent: a message that LIVELOG refuses in order (barrierStream) has
// its answer once every message sent before it was processed, so the
// stream's newest position then bounds where g's entries can be, as a
// next group's acknowledgement would. It runs in flight (resolve).
func (l *liveGroups) probe(g *liveGroup) {
	l.mu.Lock()
	carry := g.carry // unless a group sent since took it
	g.carry = nil
	l.mu.Unlock()
	var found []uint64
	searched := false
	if len(carry) > 0 && g.known != 0 {
		// A stream that took longer than AckTimeout for g may take as
		// long for the barrier: it is tried barrierTries times.
		for try := 0; try < barrierTries && found == nil; try++ {
			last, answered, err := l.barrier()
			if err != nil {
				break // not sent: the connection is closed
			}
			// last == g.known: nothing after it was stored (the stream
			// dropped the whole group), every entry certainly missing.
			if answered && last >= g.known {
				found, searched = l.locate(g.known, last+1, carry, nil)
			}
		}
	}
	again, dropped := l.sortCarried(carry, found, searched, nil, nil)
	l.retry(again, dropped)
	l.mu.Lock()
	if found != nil {
		l.located++
	}
	l.inflight--
	l.sendNextLocked()
	l.idle.Broadcast()
	l.mu.Unlock()
}

// barrierTries is how many barriers a probe sends, one after the other,
// before it gives up.
const barrierTries = 3

// barrier sends a message LIVELOG refuses in its turn and, once the
// refusal came, returns the stream's newest position (answered false: no
// refusal within AckTimeout, such as a timeout or a full ingest queue; err:
// the message could not be sent).
func (l *liveGroups) barrier() (last uint64, answered bool, err error) {
	msg := nats.Msg{Subject: liveSubject + "barrier", Header: nats.Header{jetstream.ExpectedStreamHeader: []string{barrierStream}}}
	t, err := l.e.acks.send(&msg, l.e.cfg.AckTimeout)
	if err != nil {
		return 0, false, err
	}
	var refused *apiError
	if _, err := l.e.acks.wait(context.Background(), t, l.e.cfg.AckTimeout); !errors.As(err, &refused) || refused.code != errStreamNotMatch {
		return 0, false, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.e.cfg.AckTimeout)
	defer cancel()
	pos, err := l.e.LivePosition(ctx)
	return pos.Last, err == nil, nil
}

// errStreamNotMatch is JetStream's err_code for a publish whose expected
// stream is not the stream's name (JSStreamNotMatchErr).
const errStreamNotMatch = 10060

// flush sends the group being collected and waits until every group sent
// is resolved, or timeout: at shutdown, so that the entries nobody waits
// for are stored (and acknowledged) before the connection closes.
func (l *liveGroups) flush(timeout time.Duration) bool {
	expired := make(chan struct{})
	t := time.AfterFunc(timeout, func() {
		close(expired)
		l.mu.Lock()
		l.idle.Broadcast()
		l.mu.Unlock()
	})
	defer t.Stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open != nil {
		l.queued = append(l.queued, l.open)
		l.open = nil
		l.sendNextLocked()
	}
	for l.inflight > 0 || len(l.queued) > 0 {
		select {
		case <-expired:
			return false
		default:
		}
		l.idle.Wait()
	}
	return true
}

// maxLocate bounds the messages locate reads: the group's, and those of
// the failed groups before it whose behind entries it carries (maxCarry);
// a range longer than that was not written by this engine alone, or
// after more failed groups than are worth reading back.
const (
	maxLocate = 4 * maxGroupEntries
	maxCarry  = 2 * maxGroupEntries
)

// locate finds, among the messages stored after the last position known
// before g (prevSeq: the previous group's last entry, or an earlier one's
// when that group failed) and before lastSeq (g's last, or past the
// stream's newest for a probe, with no g), the entries carried from failed
// groups before g, then g's but its last, and returns their positions in
// that order (0 for one not found). The messages are read in order and
// matched in order, by subject, key and JSON. It runs for a probe, or when a group's
// positions do not add up (a message the stream dropped, a group before
// that failed, or another writer), so that one dropped entry does not
// cost the group's others their answer.
func (l *liveGroups) locate(prevSeq, lastSeq uint64, carry []carried, g *liveGroup) (found []uint64, searched bool) {
	if lastSeq-prevSeq-1 > maxLocate {
		return nil, false
	}
	own := 0
	if g != nil {
		own = len(g.parts)
	}
	want := len(carry) + max(own-1, 0) // g's last is at lastSeq
	candidate := func(k int) (livePart, []byte) {
		if k < len(carry) {
			return carry[k].part, carry[k].data
		}
		return g.parts[k-len(carry)], g.entry(k - len(carry))
	}
	found, searched = make([]uint64, len(carry)+own), true
	ctx, cancel := context.WithTimeout(context.Background(), l.e.cfg.AckTimeout)
	defer cancel()
	next := 0 // the first candidate not matched yet
	for seq := prevSeq + 1; seq < lastSeq && next < want; seq++ {
		m, err := l.e.live.GetMsg(ctx, seq)
		if err != nil {
			if ctx.Err() != nil {
				return found, false
			}
			// Deleted since (a retention limit), or not readable: it may
			// have been one of g's, so what is not found is not certainly
			// missing.
			searched = false
			continue
		}
		for k := next; k < want; k++ {
			p, data := candidate(k)
			if m.Subject == p.subject && m.Header.Get(KeyHeader) == p.key && string(m.Data) == string(data) {
				found[k], next = seq, k+1
				break
			}
		}
	}
	return found, searched
}

// SentAgain is how many entries behind their answers the stream dropped
// and were sent a second time.
func (l *liveGroups) SentAgain() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sentAgain
}

// Unconfirmed is how many live-log entries (of Log, not LogAsync) were
// refused with errUnconfirmed (an acknowledged group that did not show them stored).
func (l *liveGroups) Unconfirmed() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unconfirmed
}
