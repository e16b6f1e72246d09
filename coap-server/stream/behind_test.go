package stream

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// behind is one LogBehind call: its entry, its key and the position done
// was given (0: not yet).
type behind struct {
	entry []byte
	key   string
	mu    sync.Mutex
	seqs  []uint64
}

// logBehind has workers callers LogBehind per entries each.
func logBehind(t *testing.T, e *Engine, workers, per int) []*behind {
	t.Helper()
	out := make([][]*behind, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := fmt.Sprintf("D%d", w)
			for i := range per {
				le := livelog.Error(dev, time.Now(), fmt.Sprintf("w%di%d", w, i))
				b := &behind{key: IDOf(MsgKey(dev, int32(i), nil, []byte{byte(w)}))}
				var err error
				if b.entry, err = le.Marshal(); err != nil {
					t.Error(err)
					return
				}
				if err := e.LogBehind(le, b.key, func(seq uint64) {
					b.mu.Lock()
					b.seqs = append(b.seqs, seq)
					b.mu.Unlock()
				}); err != nil {
					t.Error(err)
					return
				}
				out[w] = append(out[w], b)
			}
		}()
	}
	wg.Wait()
	var all []*behind
	for _, o := range out {
		all = append(all, o...)
	}
	return all
}

// An entry that follows its uplink's answer learns its position once it
// is stored: exactly once, and the position holds that entry with its key.
func TestLogBehindTellsEachEntryItsPosition(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	if !e.Behind() {
		t.Fatal("an embedded engine with storage does not log behind")
	}
	all := logBehind(t, e, 16, 200)
	if !e.FlushLive(10 * time.Second) {
		t.Fatal("entries still waiting after 10 s")
	}
	checkBehind(t, e, all)
	if e.groups.entries <= e.groups.sent {
		t.Fatalf("no group had more than one entry (%d groups, %d entries)", e.groups.sent, e.groups.entries)
	}
}

// When more entries wait than the engine holds behind answers (maxBehindBytes:
// the stream stores entries slower than uplinks come, as with an fsync per
// message), a caller waits for room rather than drop its entry. Here the
// bound is below one entry, so an entry goes only when no other waits.
func TestLogBehindWaitsWhenTooManyWait(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	e.groups.mu.Lock()
	e.groups.maxBehind = 1
	e.groups.mu.Unlock()
	const workers, per = 8, 100
	all := logBehind(t, e, workers, per)
	if n := e.BehindWaits(); n == 0 {
		t.Fatal("no caller waited for room")
	}
	// One entry at a time waited behind its answer: each caller waited
	// until the one before was stored.
	longest := 0
	for _, b := range all {
		longest = max(longest, len(b.entry))
	}
	e.groups.mu.Lock()
	peak := e.groups.peakAsync
	e.groups.mu.Unlock()
	if peak > longest {
		t.Fatalf("%d bytes of entries waited behind their answers at once, want at most one entry (%d)", peak, longest)
	}
	// The entries of LogAsync have a bound of their own.
	e.LogAsync(livelog.Error("D1", time.Now(), "async"))
	if !e.FlushLive(10 * time.Second) {
		t.Fatal("entries still waiting after 10 s")
	}
	checkBehind(t, e, all)
}

// Entries logged behind their answers faster than the stream stores them
// fill groups, and only a few full groups are in flight at once, the rest
// waiting their turn: a stream slowed by an fsync per message stores every
// entry within its acknowledgement's time. When every full group was sent
// at once, the backlog in the stream's queue outlasted AckTimeout, and
// its entries failed with the groups after them. Past maxBehindBytes the
// callers wait for room, so the backlog stays within that.
func TestLogBehindWithSyncAlwaysLosesNoEntry(t *testing.T) {
	// 5 s rather than the default 2 s: a shared disk's fsyncs stall
	// (CI); the groups in flight, checked below, are what the fix bounds.
	e := openEmbedded(t, Config{Storage: true, SyncAlways: true, AckTimeout: 5 * time.Second})
	all := logBehind(t, e, 16, 400)
	if !e.FlushLive(time.Minute) {
		t.Fatal("entries still waiting after a minute")
	}
	checkBehind(t, e, all)
	e.groups.mu.Lock()
	peak, peakBytes := e.groups.peak, e.groups.peakAsync
	e.groups.mu.Unlock()
	if peak > liveInflightFull {
		t.Fatalf("%d groups were in flight at once, want at most %d", peak, liveInflightFull)
	}
	// And the entries behind their answers stayed within their bound,
	// which keeps their lag, and the storage's wait for them, short.
	if peakBytes > maxBehindBytes {
		t.Fatalf("%d bytes of entries waited behind their answers, want at most %d", peakBytes, maxBehindBytes)
	}
}

// checkBehind: every entry was given one position, no two the same, and
// the position holds that entry with its key; none failed.
func checkBehind(t *testing.T, e *Engine, all []*behind) {
	t.Helper()
	ctx := context.Background()
	seen := make(map[uint64]bool)
	for i, b := range all {
		b.mu.Lock()
		seqs := b.seqs
		b.mu.Unlock()
		if len(seqs) != 1 {
			t.Fatalf("entry %d was given %d positions: %v", i, len(seqs), seqs)
		}
		if seen[seqs[0]] {
			t.Fatalf("position %d given twice", seqs[0])
		}
		seen[seqs[0]] = true
		m, err := e.live.GetMsg(ctx, seqs[0])
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Data) != string(b.entry) || m.Header.Get(KeyHeader) != b.key {
			t.Fatalf("entry %d (%s) was given position %d, which holds %s (key %q)", i, b.entry, seqs[0], m.Data, m.Header.Get(KeyHeader))
		}
	}
	if n := e.AsyncErrors(); n != 0 {
		t.Fatalf("%d entries failed", n)
	}
}

// Closing the engine right after entries were logged behind their answers
// stores every one of them: a deploy (a graceful stop) loses no entry.
func TestCloseStoresTheEntriesBehind(t *testing.T) {
	dir := t.TempDir()
	e := openEmbedded(t, Config{DataDir: dir, Storage: true})
	const workers, per = 16, 300
	logBehind(t, e, workers, per)
	e.Close()
	e = openEmbedded(t, Config{DataDir: dir, Storage: true})
	info, err := e.live.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != workers*per {
		t.Fatalf("the live log holds %d entries after a restart, want %d", info.State.Msgs, workers*per)
	}
}

// Without storage an entry is what makes its uplink durable, so it is
// never logged behind (nor with NATS_URL, where other instances write to
// the live log and each entry is acknowledged on its own: no groups).
func TestLogBehindNeedsStorage(t *testing.T) {
	e := openEmbedded(t, Config{})
	if e.Behind() {
		t.Fatal("an engine without storage logs behind")
	}
	if err := e.LogBehind(livelog.Error("D1", time.Now(), "x"), "", nil); err == nil {
		t.Fatal("LogBehind without storage took an entry")
	}
}
