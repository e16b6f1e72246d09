package stream

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// held is how many messages UPLINKS holds.
func held(t *testing.T, e *Engine) uint64 {
	t.Helper()
	n, err := e.UplinksHeld(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fetchOne fetches the one uplink waiting for the database.
func fetchOne(t *testing.T, e *Engine) func() error {
	t.Helper()
	src, err := e.UplinkSource(context.Background(), prometheus.NewCounter(prometheus.CounterOpts{Name: "malformed"}))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := src.Fetch(context.Background(), 1, 2*time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("fetched %d uplinks (%v), want 1", len(ds), err)
	}
	return ds[0].Ack
}

// The database stored an answered uplink whose entry is not stored yet:
// its UPLINKS message stays until the entry is, so that a crash meanwhile
// leaves the uplink there for RecoverEntries. Without the ledger the
// storage's acknowledgement deleted it at once, entry or not.
func TestStorageKeepsTheUplinkUntilItsEntryIsResolved(t *testing.T) {
	ctx := context.Background()
	e := openEmbedded(t, Config{DataDir: t.TempDir(), Storage: true, EntriesFollow: true})
	a, payload := accepted(t, "LEDGER", 1)
	a.Key = MsgKey("LEDGER", 1, nil, payload)
	if err := e.PublishUplink(ctx, a, payload); err != nil {
		t.Fatal(err)
	}
	ack := fetchOne(t, e)
	acked := make(chan error, 1)
	go func() { acked <- ack() }()
	testwait.For(t, "the storage's acknowledgement waiting for the entry", func() bool { return e.ledger.waiters() == 1 })
	if n := held(t, e); n != 1 {
		t.Fatalf("UPLINKS holds %d messages while the entry is owed, want 1", n)
	}
	// The handler, late: the entry follows the answer.
	if err := e.LogBehind(livelog.Uplink("LEDGER", a.ReceivedAt, a.Uplink, nil), IDOf(a.Key), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-acked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the acknowledgement still waits with the entry stored")
	}
	testwait.For(t, "UPLINKS empty once acknowledged", func() bool { return held(t, e) == 0 })
	if n := e.EntryWaitTimeouts(); n != 0 {
		t.Fatalf("%d acknowledgements gave up waiting, want 0", n)
	}
}

// An uplink whose caller stopped waiting (5.03, so no entry follows) may
// be stored all the same; its acknowledgement must not wait for an entry
// that never comes. AckTimeout is short so that a wait that gives up
// (counted) does not hold the test long.
func TestStorageDoesNotWaitForTheEntryOfAnUplinkGivenUpOn(t *testing.T) {
	e := openEmbedded(t, Config{DataDir: t.TempDir(), Storage: true, EntriesFollow: true, AckTimeout: 300 * time.Millisecond})
	a, payload := accepted(t, "GIVENUP", 1)
	a.Key = MsgKey("GIVENUP", 1, nil, payload)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.PublishUplink(ctx, a, payload); err == nil {
		// The batch was acknowledged before the caller looked at ctx:
		// accepted, so its entry follows as the handler's would.
		if err := e.LogBehind(livelog.Uplink("GIVENUP", a.ReceivedAt, a.Uplink, nil), IDOf(a.Key), nil); err != nil {
			t.Fatal(err)
		}
	}
	testwait.For(t, "the batch stored", func() bool { return held(t, e) == 1 })
	if err := fetchOne(t, e)(); err != nil {
		t.Fatal(err)
	}
	if n := e.EntryWaitTimeouts(); n != 0 {
		t.Fatalf("the acknowledgement waited for an entry nobody logs (%d timeouts), want none", n)
	}
	testwait.For(t, "UPLINKS empty once acknowledged", func() bool { return held(t, e) == 0 })
}

// A key owed and never settled (a defect) costs the one acknowledgement
// that waits for it, counted, not every later one.
func TestAnEntryNeverSettledIsForgottenAfterOneWait(t *testing.T) {
	l := newLedger()
	tk := l.start()
	l.published(tk, 7, [][16]byte{{1}})
	if l.wait(7, l.mark(), 10*time.Millisecond) {
		t.Fatal("the wait did not give up with an entry owed")
	}
	if !l.wait(8, l.mark(), 5*time.Second) {
		t.Fatal("a later wait gave up")
	}
	if l.timeouts != 1 {
		t.Fatalf("%d timeouts counted, want 1", l.timeouts)
	}
}

// BenchmarkLedger is what the ledger adds per uplink on the datagram
// path: its share of a batch of 16 registered at the acknowledgement, and
// its entry settled by its key.
//
//	go test -run '^$' -bench Ledger ./coap-server/stream
func BenchmarkLedger(b *testing.B) {
	l := newLedger()
	const per = 16
	keys := make([][16]byte, per)
	ids := make([]string, per)
	for j := range keys {
		keys[j] = MsgKey("BENCH", int32(j), nil, nil)
		ids[j] = IDOf(keys[j])
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += per {
		t := l.start()
		l.published(t, uint64(i/per+1), keys)
		for _, id := range ids {
			l.settle(id)
		}
	}
	if len(l.owed) != 0 || len(l.pending) != 0 {
		b.Fatalf("%d keys and %d positions still owed", len(l.owed), len(l.pending))
	}
}

// A storage fetch may get a batch message before this process has read
// the batch's acknowledgement: the publish's ticket, started before the
// fetch, holds the wait until the batch's keys are known, and then until
// their entries are settled.
func TestLedgerWaitsForAPublishStartedBeforeTheFetch(t *testing.T) {
	l := newLedger()
	tk := l.start()
	mark := l.mark() // the fetch: the message is there, its acknowledgement not read
	cleared := make(chan bool, 1)
	go func() { cleared <- l.wait(5, mark, 5*time.Second) }()
	testwait.For(t, "the wait held by the publish in flight", func() bool { return l.waiters() == 1 })
	key := [16]byte{5}
	l.published(tk, 5, [][16]byte{key})
	l.mu.Lock()
	clear := l.clearLocked(5, mark)
	l.mu.Unlock()
	if clear {
		t.Fatal("clear with the batch's entry owed")
	}
	l.settleKey(key)
	if !<-cleared {
		t.Fatal("the wait gave up")
	}
	// A publish started after the fetch does not hold it.
	late := l.start()
	if !l.wait(5, mark, time.Second) {
		t.Fatal("a publish started after the fetch held the wait")
	}
	l.published(late, 0, nil)
}

// A copy of an uplink accepted twice (after its answer left the table of
// recent answers) owes two entries under one key: the first one settled
// does not clear the message of the other.
func TestLedgerCountsACopyAcceptedTwice(t *testing.T) {
	l := newLedger()
	key := [16]byte{7}
	a, b := l.start(), l.start()
	l.published(a, 10, [][16]byte{key})
	l.published(b, 11, [][16]byte{key})
	l.settleKey(key)
	l.mu.Lock()
	clear := l.clearLocked(11, l.tickets)
	l.mu.Unlock()
	if clear {
		t.Fatal("one settle cleared both copies")
	}
	l.settleKey(key)
	if !l.wait(11, l.mark(), time.Second) {
		t.Fatal("both settled, the wait still held")
	}
}
