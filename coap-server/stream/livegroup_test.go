package stream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// logged is what one Log call published and what it was told.
type logged struct {
	device, id string
	entry      []byte
	seq        uint64
	err        error
}

// logConcurrently has workers callers Log per entries each, so that the
// entries of callers waiting together share a group.
func logConcurrently(t *testing.T, e *Engine, round, workers, per int) []logged {
	t.Helper()
	out := make([][]logged, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := fmt.Sprintf("D%d", w)
			for i := range per {
				l := logged{device: dev, id: fmt.Sprintf("r%dw%di%d", round, w, i)}
				l.entry = fmt.Appendf(nil, `{"deviceId":%q,"n":%q}`, dev, l.id)
				l.seq, _, l.err = e.LogJSON(context.Background(), dev, l.entry, l.id)
				out[w] = append(out[w], l)
			}
		}()
	}
	wg.Wait()
	var all []logged
	for _, o := range out {
		all = append(all, o...)
	}
	return all
}

// checkPositions fails the test for a position told to a caller that does
// not hold that caller's entry, and returns how many calls got
// errUnconfirmed.
func checkPositions(t *testing.T, e *Engine, all []logged) (unconfirmed int) {
	t.Helper()
	ctx := context.Background()
	seen := make(map[uint64]string)
	for _, l := range all {
		switch {
		case errors.Is(l.err, errUnconfirmed):
			unconfirmed++
			continue
		case l.err != nil:
			t.Fatalf("%s: %v", l.id, l.err)
		}
		if other, dup := seen[l.seq]; dup {
			t.Fatalf("position %d told to %s and to %s", l.seq, other, l.id)
		}
		seen[l.seq] = l.id
		m, err := e.live.GetMsg(ctx, l.seq)
		if err != nil {
			t.Fatalf("%s at %d: %v", l.id, l.seq, err)
		}
		if m.Subject != liveSubject+l.device || string(m.Data) != string(l.entry) || m.Header.Get(KeyHeader) != l.id {
			t.Fatalf("%s was told position %d, which holds %s %s (key %q)", l.id, l.seq, m.Subject, m.Data, m.Header.Get(KeyHeader))
		}
	}
	return unconfirmed
}

// Entries acknowledged as a group each learn their own position, and it
// holds their entry, with its key.
func TestGroupedEntriesGetTheirOwnPositions(t *testing.T) {
	e := openEmbedded(t, Config{})
	all := logConcurrently(t, e, 0, 16, 300)
	if n := checkPositions(t, e, all); n != 0 {
		t.Fatalf("%d entries unconfirmed with nobody else publishing", n)
	}
	e.groups.mu.Lock()
	sent, entries := e.groups.sent, e.groups.entries
	e.groups.mu.Unlock()
	t.Logf("%d entries in %d groups", entries, sent)
	if entries <= sent {
		t.Fatalf("%d entries in %d groups: no group had more than one, so this tested nothing", entries, sent)
	}
	info, err := e.live.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != uint64(len(all)) {
		t.Fatalf("the stream's last position is %d after %d entries", info.State.LastSeq, len(all))
	}
}

// Another publisher on the live log (which the embedded engine never has:
// this stands for any message the stream stored or dropped unseen between
// a group's entries) makes the group's positions not add up: its entries
// are then looked for in the stream and found, never told a position that
// holds something else.
func TestGroupNeverReturnsAWrongPosition(t *testing.T) {
	e := openEmbedded(t, Config{LivePerDevice: 1 << 20})
	stop := make(chan struct{})
	intruded := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				intruded <- nil
				return
			default:
			}
			if _, err := e.feedJS.Publish(context.Background(), liveSubject+"INTRUDER", fmt.Appendf(nil, `{"i":%d}`, i)); err != nil {
				intruded <- err
				return
			}
			// One entry of its own, whose group's outcome it waits for:
			// about one intruding message per group, as few as one
			// dropped message would make.
			_, _, _ = e.LogJSON(context.Background(), "PACER", fmt.Appendf(nil, `{"p":%d}`, i), "")
		}
	}()
	located := func() int64 {
		e.groups.mu.Lock()
		defer e.groups.mu.Unlock()
		return e.groups.located
	}
	unconfirmed := 0
	for round := 0; round < 20 && located() == 0; round++ {
		unconfirmed += checkPositions(t, e, logConcurrently(t, e, round, 16, 200))
	}
	close(stop)
	if err := <-intruded; err != nil {
		t.Fatal(err)
	}
	if located() == 0 {
		t.Fatal("no group was interleaved with the other publisher in 20 rounds: this tested nothing")
	}
	if unconfirmed != 0 || e.UnconfirmedEntries() != 0 {
		t.Fatalf("%d entries unconfirmed (counted %d), though every one was stored", unconfirmed, e.UnconfirmedEntries())
	}
	t.Logf("%d groups looked for", located())
}

// An entry that fits MaxEntryBytes only without its key header is refused
// before it is sent: the stream counts the header, and would drop it
// without a word in the middle of a group.
func TestEntryTooLargeWithItsHeader(t *testing.T) {
	e := openEmbedded(t, Config{})
	id := IDOf(MsgKey("D", 1, nil, nil))
	entry := make([]byte, MaxEntryBytes-len(id))
	for i := range entry {
		entry[i] = 'x'
	}
	if _, _, err := e.LogJSON(context.Background(), "D", entry, id); !errors.Is(err, errEntryTooLarge) {
		t.Fatalf("got %v, want errEntryTooLarge", err)
	}
	if _, _, err := e.LogJSON(context.Background(), "D", entry[:MaxEntryBytes/2], id); err != nil {
		t.Fatal(err)
	}
}

// testGroup is a group of entries of device D as add makes it, each with
// its own key.
func testGroup(prev *liveGroup, entries ...string) *liveGroup {
	g := &liveGroup{prev: prev, done: make(chan struct{})}
	for i, en := range entries {
		g.data = append(g.data, en...)
		g.parts = append(g.parts, livePart{subject: liveSubject + "D", key: fmt.Sprintf("k-%s-%d", en, i), end: len(g.data)})
	}
	return g
}

// store stores g's entries as sendLocked would (with their keys) and
// returns the last one's position.
func store(t *testing.T, e *Engine, g *liveGroup) uint64 {
	t.Helper()
	var seq uint64
	start := 0
	for _, p := range g.parts {
		msg := &nats.Msg{Subject: p.subject, Data: g.data[start:p.end], Header: nats.Header{KeyHeader: []string{p.key}}}
		start = p.end
		ack, err := e.feedJS.PublishMsg(context.Background(), msg)
		if err != nil {
			t.Fatal(err)
		}
		seq = ack.Sequence
	}
	return seq
}

// A group whose acknowledgement never came (it may be stored all the same)
// leaves the next group without a previous position to count from: its
// entries are looked for from the last position known, and found, not
// refused. Before, all but its last got errUnconfirmed (without storage,
// 5.03 for uplinks that were stored).
func TestGroupAfterAFailedOneFindsItsEntries(t *testing.T) {
	e := openEmbedded(t, Config{LivePerDevice: 1 << 20})
	l := e.groups
	first := testGroup(nil, `{"z":1}`)
	lost := testGroup(first, `{"a":1}`, `{"a":2}`)
	next := testGroup(lost, `{"b":1}`, `{"b":2}`, `{"b":3}`)
	firstSeq := store(t, e, first)
	store(t, e, lost) // stored; its acknowledgement lost
	nextSeq := store(t, e, next)
	l.mu.Lock()
	l.inflight += 3
	l.mu.Unlock()
	l.resolve(first, pubAck{Sequence: firstSeq}, nil)
	l.resolve(lost, pubAck{}, ErrUnavailable)
	l.resolve(next, pubAck{Sequence: nextSeq}, nil)
	for i := range next.parts {
		seq, err := next.result(i)
		if err != nil {
			t.Fatalf("entry %d of the group after the failed one: %v", i, err)
		}
		m, err := e.live.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := m.Header.Get(KeyHeader), next.parts[i].key; got != want {
			t.Fatalf("entry %d told position %d, which holds %q, want %q", i, seq, got, want)
		}
	}
	if n := e.UnconfirmedEntries(); n != 0 {
		t.Fatalf("%d entries unconfirmed, want 0", n)
	}
}

// An entry behind its answer that the stream dropped (looked for among
// the group's positions and certainly not there) is sent once more: its
// uplink was answered 2.04 and nobody else would. It then has a position
// holding it, done is told it, and the ledger no longer owes it. Before,
// it was counted failed and the live log went without it.
func TestDroppedEntryBehindItsAnswerIsSentAgain(t *testing.T) {
	e := openEmbedded(t, Config{LivePerDevice: 1 << 20, Storage: true, EntriesFollow: true})
	l := e.groups
	first := testGroup(nil, `{"z":1}`)
	firstSeq := store(t, e, first)
	g := testGroup(first, `{"c":1}`, `{"c":2}`, `{"c":3}`)
	type tell struct {
		seq  uint64
		owed bool // the ledger still owed the entry's key when told
	}
	told := make(chan tell, 3)
	owes := func(key string) bool { return ledgerOwes(t, e, key) }
	for i := range g.parts {
		g.parts[i].async, g.parts[i].behind = true, true
		g.parts[i].done = func(seq uint64) { told <- tell{seq, owes(g.parts[i].key)} }
	}
	g.async, g.asyncBytes = 3, len(g.data)
	// The ledger owes the three entries; the middle one is dropped.
	var keys [][16]byte
	for i := range g.parts {
		k := MsgKey("D", int32(i), nil, nil)
		keys = append(keys, k)
		g.parts[i].key = IDOf(k)
	}
	tk := e.ledger.start()
	e.ledger.published(tk, 1, keys)
	kept := &liveGroup{data: g.data, parts: []livePart{g.parts[0], g.parts[2]}}
	kept.parts[1].end, kept.data = len(`{"c":1}`)+len(`{"c":3}`), append(append([]byte(nil), `{"c":1}`...), `{"c":3}`...)
	lastSeq := store(t, e, kept)
	l.mu.Lock()
	l.inflight += 2
	l.async += g.asyncBytes
	l.mu.Unlock()
	l.resolve(first, pubAck{Sequence: firstSeq}, nil)
	l.resolve(g, pubAck{Sequence: lastSeq}, nil)

	held := make(map[string]bool)
	for range 3 {
		select {
		case tl := <-told:
			m, err := e.live.GetMsg(context.Background(), tl.seq)
			if err != nil {
				t.Fatal(err)
			}
			held[string(m.Data)] = true
			// Told before it is settled: until its second try was stored,
			// its uplink had to stay in UPLINKS.
			if !tl.owed {
				t.Errorf("the ledger no longer owed %s when its position came", m.Data)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("positions told: %v; the dropped entry has none", held)
		}
	}
	for _, want := range []string{`{"c":1}`, `{"c":2}`, `{"c":3}`} {
		if !held[want] {
			t.Errorf("no position told holds %s (%v)", want, held)
		}
	}
	checkSentAgain(t, e, 1)
}

// checkSentAgain checks that n entries were sent again, none counted
// failed, and the ledger owes nothing once they are resolved.
func checkSentAgain(t *testing.T, e *Engine, n int64) {
	t.Helper()
	if got := e.groups.SentAgain(); got != n {
		t.Errorf("%d entries sent again, want %d (those the stream dropped)", got, n)
	}
	if n := e.AsyncErrors(); n != 0 {
		t.Errorf("%d entries counted failed, want 0", n)
	}
	if !e.ledger.wait(1, e.ledger.mark(), 5*time.Second) {
		t.Error("the ledger still owes an entry")
	}
}

// ledgerOwes reports whether e's ledger owes the entry of key (IDOf).
func ledgerOwes(t *testing.T, e *Engine, key string) bool {
	var k [16]byte
	copy(k[:], mustDecode(t, key))
	e.ledger.mu.Lock()
	defer e.ledger.mu.Unlock()
	_, ok := e.ledger.owed[k]
	return ok
}

func mustDecode(t *testing.T, id string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// told is what a behind entry's done callback was told.
type told struct {
	key  string
	seq  uint64
	owed bool // the ledger still owed the entry when told
}

// behindEntries makes the entries of groups behind their answers, owed by
// the ledger, each telling its position on the channel returned.
func behindEntries(t *testing.T, e *Engine, groups ...*liveGroup) <-chan told {
	c := make(chan told, 16)
	var keys [][16]byte
	for _, g := range groups {
		for i := range g.parts {
			k := MsgKey("D", int32(len(keys)), nil, nil)
			keys = append(keys, k)
			p := &g.parts[i]
			p.key, p.async, p.behind = IDOf(k), true, true
			key := p.key
			p.done = func(seq uint64) { c <- told{key, seq, ledgerOwes(t, e, key)} }
		}
		g.async, g.asyncBytes = len(g.parts), len(g.data)
	}
	tk := e.ledger.start()
	e.ledger.published(tk, 1, keys)
	return c
}

// checkTold checks that every entry of groups was told a position that
// holds it, while the ledger still owed it.
func checkTold(t *testing.T, e *Engine, c <-chan told, groups ...*liveGroup) {
	t.Helper()
	want := make(map[string]string) // key: JSON
	for _, g := range groups {
		for i, p := range g.parts {
			want[p.key] = string(g.entry(i))
		}
	}
	for range want {
		select {
		case tl := <-c:
			m, err := e.live.GetMsg(context.Background(), tl.seq)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Header.Get(KeyHeader); got != tl.key || string(m.Data) != want[tl.key] {
				t.Errorf("entry %s (%s) told position %d, which holds %s (%s)", tl.key, want[tl.key], tl.seq, got, m.Data)
			}
			if !tl.owed {
				t.Errorf("the ledger no longer owed %s when its position came", m.Data)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("not every one of the %d entries was told a position", len(want))
		}
	}
}

// The behind entries of groups whose acknowledgements never came (they may
// be stored all the same; their uplinks were answered 2.04) are looked for
// with the next acknowledged group's: each found is told its position and
// then settled, one certainly missing is sent again, and until then the
// ledger owes them all, so that storage keeps their uplinks. Before, they
// were settled and counted failed at once, and the one the stream had
// dropped was lost with its uplink deleted from UPLINKS.
func TestBehindEntriesOfAFailedGroupAreLookedFor(t *testing.T) {
	e := openEmbedded(t, Config{LivePerDevice: 1 << 20, Storage: true, EntriesFollow: true})
	l := e.groups
	first := testGroup(nil, `{"z":1}`)
	firstSeq := store(t, e, first)
	lost1 := testGroup(first, `{"a":1}`, `{"a":2}`, `{"a":3}`)
	lost2 := testGroup(lost1, `{"c":1}`)
	next := testGroup(lost2, `{"b":1}`, `{"b":2}`)
	c := behindEntries(t, e, lost1, lost2)
	// What the stream stored: lost1 without its middle entry, lost2, next.
	kept := testGroup(nil, `{"a":1}`, `{"a":3}`)
	kept.parts[0].key, kept.parts[1].key = lost1.parts[0].key, lost1.parts[2].key
	store(t, e, kept)
	store(t, e, lost2)
	nextSeq := store(t, e, next)
	l.mu.Lock()
	l.inflight += 4
	l.async += lost1.asyncBytes + lost2.asyncBytes
	l.mu.Unlock()
	l.resolve(first, pubAck{Sequence: firstSeq}, nil)
	l.resolve(lost1, pubAck{}, ErrUnavailable)
	l.resolve(lost2, pubAck{}, ErrUnavailable)
	for _, g := range []*liveGroup{lost1, lost2} {
		for _, p := range g.parts {
			if !ledgerOwes(t, e, p.key) {
				t.Fatalf("entry %s of a group whose acknowledgement never came settled before it was looked for", p.key)
			}
		}
	}
	l.resolve(next, pubAck{Sequence: nextSeq}, nil)
	checkTold(t, e, c, lost1, lost2)
	for i := range next.parts {
		if _, err := next.result(i); err != nil {
			t.Errorf("entry %d of the acknowledged group: %v", i, err)
		}
	}
	checkSentAgain(t, e, 1)
}

// A failed group after which no group is sent (the last before an idle
// spell, or shutdown) has its behind entries looked for all the same,
// past a barrier message the stream refuses in its turn, and a flush
// waits for that. The barrier is not stored. A group the stream dropped
// whole (nothing after the last position known) is sent again whole.
func TestBehindEntriesOfTheLastFailedGroupAreLookedFor(t *testing.T) {
	for _, kept := range []int{1, 0} {
		t.Run(fmt.Sprintf("kept=%d", kept), func(t *testing.T) {
			e := openEmbedded(t, Config{LivePerDevice: 1 << 20, Storage: true, EntriesFollow: true})
			l := e.groups
			first := testGroup(nil, `{"z":1}`)
			firstSeq := store(t, e, first)
			lost := testGroup(first, `{"a":1}`, `{"a":2}`)
			c := behindEntries(t, e, lost)
			if kept == 1 { // the stream dropped the second
				k := testGroup(nil, `{"a":1}`)
				k.parts[0].key = lost.parts[0].key
				store(t, e, k)
			}
			l.mu.Lock()
			l.inflight += 2
			l.async += lost.asyncBytes
			l.last = lost // as sendLocked records it
			l.mu.Unlock()
			l.resolve(first, pubAck{Sequence: firstSeq}, nil)
			l.resolve(lost, pubAck{}, ErrUnavailable)
			if !l.flush(5 * time.Second) {
				t.Fatal("flush timed out")
			}
			checkTold(t, e, c, lost)
			checkSentAgain(t, e, int64(2-kept))
			pos, err := e.LivePosition(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if want := firstSeq + 2; pos.Last != want {
				t.Errorf("newest position %d, want %d: the first entry and the group's two", pos.Last, want)
			}
		})
	}
}

// Behind entries carried from a failed group that cannot be looked for
// (no position is known before them) are settled and counted failed, as
// before: the ledger does not wait for them.
func TestBehindEntriesOfAFailedGroupNotLookedForAreCounted(t *testing.T) {
	e := openEmbedded(t, Config{LivePerDevice: 1 << 20, Storage: true, EntriesFollow: true})
	l := e.groups
	lost := testGroup(nil, `{"a":1}`, `{"a":2}`)
	next := testGroup(lost, `{"b":1}`)
	var keys [][16]byte
	for i := range lost.parts {
		k := MsgKey("D", int32(i), nil, nil)
		keys = append(keys, k)
		lost.parts[i].key, lost.parts[i].async, lost.parts[i].behind = IDOf(k), true, true
	}
	lost.async, lost.asyncBytes = 2, len(lost.data)
	tk := e.ledger.start()
	e.ledger.published(tk, 1, keys)
	nextSeq := store(t, e, next)
	l.mu.Lock()
	l.inflight += 2
	l.async += lost.asyncBytes
	l.mu.Unlock()
	l.resolve(lost, pubAck{}, ErrUnavailable)
	l.resolve(next, pubAck{Sequence: nextSeq}, nil)
	if n := e.AsyncErrors(); n != 2 {
		t.Errorf("%d entries counted failed, want 2", n)
	}
	if !e.ledger.wait(1, e.ledger.mark(), time.Second) {
		t.Error("the ledger still owes the entries given up on")
	}
}
