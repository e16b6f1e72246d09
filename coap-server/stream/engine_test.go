package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/logtest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// openEmbedded opens an engine on a fresh data directory.
func openEmbedded(t testing.TB, cfg Config) *Engine {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	e, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func accepted(t testing.TB, device string, count uint32) (uplink.Accepted, []byte) {
	u := &nbiotv1.Uplink{DeviceId: device, UplinkCount: count}
	b, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	return uplink.Accepted{ID: uuid.New(), DeviceID: device, ReceivedAt: time.Now(), Uplink: u}, b
}

func TestUplinksFullIsErrFull(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true, UplinksBytes: 4096})
	ctx := context.Background()
	var err error
	for i := 0; i < 200 && err == nil; i++ {
		a, payload := accepted(t, "D1", uint32(i))
		err = e.PublishUplink(ctx, a, payload)
	}
	if err == nil || !errorsIs(err, ErrFull) {
		t.Fatalf("publishing past UPLINKS_MAX_BYTES: %v, want ErrFull", err)
	}
}

func TestLogReadTailAndLost(t *testing.T) {
	e := openEmbedded(t, Config{LivePerDevice: 5})
	ctx := context.Background()
	var seqs = map[string][]uint64{}
	for i := range 12 {
		dev := []string{"A", "B", "C"}[i%3]
		seq, dup, err := e.LogJSON(ctx, dev, []byte(fmt.Sprintf(`{"deviceId":%q,"n":%d}`, dev, i)), "")
		if err != nil || dup {
			t.Fatal(err, dup)
		}
		seqs[dev] = append(seqs[dev], seq)
	}
	pos, err := e.LivePosition(ctx)
	if err != nil || pos.Last != 12 || pos.First != 1 {
		t.Fatalf("position %+v, %v", pos, err)
	}
	var got []uint64
	err = e.Read(ctx, []Cursor{{Device: "A", From: 3}, {Device: "C", From: 1}}, pos.Last, func(seq uint64, dev string, _ []byte) error {
		got = append(got, seq)
		return nil
	})
	want := []uint64{3, 4, 6, 7, 9, 10, 12}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("read A from 3 and C: %v %v, want %v", got, err, want)
	}
	start, err := e.TailStart(ctx, "B", 2, pos.Last)
	if err != nil || start != seqs["B"][2] {
		t.Fatalf("tail start of B: %d %v, want %d", start, err, seqs["B"][2])
	}
	if lost, err := e.Lost(ctx, "A", 0, pos); err != nil || lost {
		t.Fatalf("nothing dropped yet: lost=%v %v", lost, err)
	}
	if lost, _ := e.Lost(ctx, "A", 99, pos); !lost {
		t.Fatal("since beyond the newest position is not reported")
	}
	// Two more entries of A push its oldest out (5 per device).
	for range 2 {
		if _, _, err := e.LogJSON(ctx, "A", []byte(`{}`), ""); err != nil {
			t.Fatal(err)
		}
	}
	pos, _ = e.LivePosition(ctx)
	if lost, _ := e.Lost(ctx, "A", 0, pos); !lost {
		t.Fatal("entries dropped by LIVELOG_PER_DEVICE are not reported")
	}
	if lost, _ := e.Lost(ctx, "B", 1, pos); lost {
		t.Fatal("B lost nothing after position 1")
	}
	if lost, _ := e.Lost(ctx, "B", 0, pos); !lost {
		t.Fatal("since 0 after the log dropped position 1: B cannot know, must say lost")
	}
	// A's oldest is now position 4, in the middle of the log: dropped, it is
	// a gap to a reader of every device since 0 to 3, told where it is
	// (before 5), not since 4; position 1 is a gap since 0.
	if _, _, err := e.LogJSON(ctx, "A", []byte(`{}`), ""); err != nil {
		t.Fatal(err)
	}
	pos, _ = e.LivePosition(ctx)
	if pos.First != 2 || pos.Last != 15 || pos.Deleted != 1 {
		t.Fatalf("position %+v, want 2 to 15 with position 4 gone", pos)
	}
	for since, want := range map[uint64][]int64{
		0: slices.Concat([]int64{-1, 2, 3, -1}, span(5, 15, 1)), 1: slices.Concat([]int64{2, 3, -1}, span(5, 15, 1)),
		3: slices.Concat([]int64{-1}, span(5, 15, 1)), 4: span(5, 15, 1), 14: {15}, 15: nil,
	} {
		if got := readResumed(t, e, Cursor{From: since + 1}, pos.Last, nil); !slices.Equal(got, want) {
			t.Errorf("every device since %d: got %v, want %v", since, got, want)
		}
	}
}

func TestFeedDeliversNewEntriesInOrder(t *testing.T) {
	e := openEmbedded(t, Config{})
	ctx := context.Background()
	if _, _, err := e.LogJSON(ctx, "A", []byte(`{"old":true}`), ""); err != nil {
		t.Fatal(err)
	}
	got := make(chan uint64, 100)
	stop, _, err := e.Feed(ctx, func(seq uint64, dev string, data []byte) { got <- seq })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for range 5 {
		if _, _, err := e.LogJSON(ctx, "B", []byte(`{}`), ""); err != nil {
			t.Fatal(err)
		}
	}
	e.Notify(livelog.Status("B", time.Now(), "note", nil))
	var seen []uint64
	for len(seen) < 6 {
		select {
		case s := <-got:
			seen = append(seen, s)
		case <-time.After(30 * time.Second):
			t.Fatalf("feed delivered %v", seen)
		}
	}
	// The notification travels on core NATS and may overtake entries.
	if i := slices.Index(seen, 0); i < 0 || !slices.Equal(slices.Delete(slices.Clone(seen), i, i+1), []uint64{2, 3, 4, 5, 6}) {
		t.Fatalf("feed delivered %v, want 2..6 in order and one notification (0)", seen)
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// TestDuplicatesWindowCoversAnExchange: the live log recognises a copy
// (with NATS_URL, where its entries carry message IDs) for CoAP's whole
// EXCHANGE_LIFETIME (RFC 7252 §4.8.2: 247 s with default
// parameters; ingest.ExchangeLifetime, which this package cannot import),
// and a stream made by an earlier version with another window gets the
// default at start, as every setting of the streams does.
func TestDuplicatesWindowCoversAnExchange(t *testing.T) {
	const exchangeLifetime = 247 * time.Second
	if DefaultDuplicates < exchangeLifetime {
		t.Fatalf("DefaultDuplicates %v is shorter than EXCHANGE_LIFETIME %v", DefaultDuplicates, exchangeLifetime)
	}
	dir := t.TempDir()
	old, err := Open(context.Background(), Config{DataDir: dir, Storage: true, Duplicates: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	e := openEmbedded(t, Config{DataDir: dir, Storage: true})
	ctx := context.Background()
	for _, name := range []string{LiveLogStream, UplinksStream} {
		s, err := e.js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.Duplicates; got != DefaultDuplicates {
			t.Errorf("%s: duplicate window %v after a restart, want the default %v", name, got, DefaultDuplicates)
		}
	}
}

// TestFeedResetBeforeItsFirstEntryMissesNothing: the feed's consumer is
// lost before it delivered anything (its server-side state deleted, as a
// restart of a cluster node or a disconnect does) while entries are
// published; re-created, it delivers them, from where the feed started,
// not from whatever is new by then (nats.go re-creates an ordered consumer
// that delivered nothing with its first configuration).
func TestFeedResetBeforeItsFirstEntryMissesNothing(t *testing.T) {
	e := openEmbedded(t, Config{})
	ctx := context.Background()
	got := make(chan uint64, 100)
	stop, _, err := e.Feed(ctx, func(seq uint64, _ string, _ []byte) {
		if seq != 0 {
			got <- seq
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	names := e.feedLive.ListConsumers(ctx)
	var deleted int
	for c := range names.Info() {
		if err := e.feedLive.DeleteConsumer(ctx, c.Name); err != nil {
			t.Fatal(err)
		}
		deleted++
	}
	if deleted == 0 {
		t.Fatal("the feed has no consumer to delete")
	}
	var want []uint64
	for range 5 {
		seq, _, err := e.LogJSON(ctx, "B", []byte(`{}`), "")
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, seq)
	}
	var seen []uint64
	for len(seen) < len(want) {
		select {
		case s := <-got:
			seen = append(seen, s)
		case <-time.After(30 * time.Second):
			t.Fatalf("after the reset the feed delivered %v, want %v", seen, want)
		}
	}
	if !slices.Equal(seen, want) {
		t.Fatalf("feed delivered %v, want %v", seen, want)
	}
}

// tail=N of the whole log reads the last N entries and the holes among
// them, not the log: TailStart("", 1) of 3,000 entries fetches one page
// or two. It read every retained entry from position 1 (41 pages here;
// about 25 s of CPU for a full default LIVELOG_MAX_BYTES, per connect).
// The start is the one a scan of everything gives, holes included.
func TestWholeLogTailReadsOnlyTheTail(t *testing.T) {
	e := openEmbedded(t, Config{})
	ctx := context.Background()
	for i := range 3000 {
		if _, _, err := e.LogJSON(ctx, []string{"A", "B", "C"}[i%3], []byte(`{}`), ""); err != nil {
			t.Fatal(err)
		}
	}
	// Holes, as retention makes them: a run near the end and scattered ones.
	for _, seq := range slices.Concat(span(2980, 2995, 1), span(100, 2900, 7)) {
		if err := e.feedLive.DeleteMsg(ctx, uint64(seq)); err != nil {
			t.Fatal(err)
		}
	}
	pos, err := e.LivePosition(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var all []uint64 // every retained position, by a full scan
	if err := e.Read(ctx, []Cursor{{From: 1}}, pos.Last, func(seq uint64, _ string, _ []byte) error {
		all = append(all, seq)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	pages := 0
	afterFetch = func() { pages++ }
	t.Cleanup(func() { afterFetch = nil })
	for _, n := range []int{1, 5, 20, 700, len(all), len(all) + 10} {
		pages = 0
		got, err := e.TailStart(ctx, "", n, pos.Last)
		want := all[max(0, len(all)-n)]
		if err != nil || got != want {
			t.Fatalf("tail=%d: %d %v, want %d", n, got, err, want)
		}
		if n == 1 && pages > 2 {
			t.Errorf("tail=1 fetched %d pages of %d, want 1 or 2", pages, historyBatch)
		}
	}
	if got, _ := e.TailStart(ctx, "", 3, 10); got != 8 {
		t.Errorf("tail=3 up to 10: %d, want 8", got)
	}
}

// Closing the engine (every shutdown, every deploy) warns of nothing: it
// logged "nats: disconnected; uplinks get 5.03" once per connection.
func TestCloseWarnsOfNothing(t *testing.T) {
	var logs logtest.Buffer
	e, err := Open(context.Background(), Config{DataDir: t.TempDir(), Storage: true,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if s := logs.String(); s != "" {
		t.Fatalf("Close logged:\n%s", s)
	}
}
