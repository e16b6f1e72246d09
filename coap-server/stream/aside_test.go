package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/natstest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// newerBatch is a batch of one uplink published as a newer version
// would: on a batch subject this version does not know.
func newerBatch(t *testing.T, device string, i int) *nats.Msg {
	a, payload := accepted(t, device, uint32(i))
	return &nats.Msg{Subject: uplinkSubject + "batch.v9", Data: appendRecord(nil, uplink.AppendMessage(nil, a, payload))}
}

// readableBatch is a batch this version reads, and its uplink's ID.
func readableBatch(t *testing.T, device string, i int) (*nats.Msg, uuid.UUID) {
	a, payload := accepted(t, device, uint32(i))
	return &nats.Msg{Subject: batchSubject, Data: appendRecord(nil, uplink.AppendMessage(nil, a, payload))}, a.ID
}

func publish(t *testing.T, e *Engine, msgs ...*nats.Msg) {
	t.Helper()
	for _, m := range msgs {
		if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
}

// fetchUntil fetches and acknowledges until it has had the uplinks of
// want, and fails after 10 s or on any other uplink.
func fetchUntil(t *testing.T, src *UplinkSource, want ...uuid.UUID) {
	t.Helper()
	left := map[uuid.UUID]bool{}
	for _, id := range want {
		left[id] = true
	}
	for deadline := time.Now().Add(10 * time.Second); len(left) > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of the %d readable uplinks never delivered", len(left), len(want))
		}
		ds, err := src.Fetch(context.Background(), 10, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if !left[d.Accepted.ID] {
				t.Fatalf("delivered %s, not one of the readable uplinks still expected", d.Accepted.DeviceID)
			}
			delete(left, d.Accepted.ID)
			if err := d.Ack(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// Unreadable messages no longer stop storage: they took the storage
// consumer's acknowledgements pending (20,000; 4 here) and the readable
// uplinks behind them were never delivered. Moved aside, they free them;
// on the embedded server and on Debian's nats-server (2.9) as NATS_URL.
func TestUnreadableMessagesDoNotStopStorage(t *testing.T) {
	defer func(n int) { storageMaxAckPending = n }(storageMaxAckPending)
	storageMaxAckPending = 4
	t.Run("embedded", func(t *testing.T) { unreadableDoNotStop(t, "") })
	t.Run("NATS_URL", func(t *testing.T) { unreadableDoNotStop(t, natstest.Start(t).URL) })
}

func unreadableDoNotStop(t *testing.T, url string) {
	e := openEmbedded(t, Config{URL: url, Storage: true})
	for i := range 6 {
		publish(t, e, newerBatch(t, "NEW", i))
	}
	m1, id1 := readableBatch(t, "OK", 1)
	m2, id2 := readableBatch(t, "OK", 2)
	publish(t, e, m1, m2)
	malformed := prometheus.NewCounter(prometheus.CounterOpts{Name: "m"})
	src, err := e.UplinkSource(context.Background(), malformed)
	if err != nil {
		t.Fatal(err)
	}
	src.nextAside = time.Now().Add(time.Hour)
	fetchUntil(t, src, id1, id2)
	if n := testutil.ToFloat64(malformed); n != 6 {
		t.Fatalf("malformed = %v, want 6", n)
	}
	testwait.For(t, "the 6 unreadable messages in "+AsideStream, func() bool {
		return inStream(t, e, UplinksStream) == 0 && inStream(t, e, AsideStream) == 6
	})
}

// What UPLINKS_UNREADABLE holds that this version can read (an older
// version moved it there) is stored from it; what it cannot read stays
// there, handed back for later, neither moved again nor delivered again
// at once.
func TestAsideIsStoredWhereReadable(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	readable, id := readableBatch(t, "OK", 1)
	unread := newerBatch(t, "NEW", 1)
	for _, m := range []*nats.Msg{readable, unread} {
		moved := nats.NewMsg(asideSubject)
		moved.Header.Set(SubjectHeader, m.Subject)
		moved.Data = m.Data
		publish(t, e, moved)
	}
	malformed := prometheus.NewCounter(prometheus.CounterOpts{Name: "m"})
	src, err := e.UplinkSource(context.Background(), malformed)
	if err != nil {
		t.Fatal(err)
	}
	fetchUntil(t, src, id) // the first Fetch looks aside
	testwait.ForState(t, "the unreadable one alone in "+AsideStream+", handed back", func() (bool, string) {
		c, err := e.js.Consumer(context.Background(), AsideStream, AsideConsumer)
		if err != nil {
			t.Fatal(err)
		}
		ci := c.CachedInfo()
		n := inStream(t, e, AsideStream)
		return n == 1 && ci.NumAckPending == 1, fmt.Sprintf("%d held, %d pending acknowledgement", n, ci.NumAckPending)
	})
	src.nextAside = time.Time{} // look again at once: it is not delivered again yet
	if ds, err := src.Fetch(context.Background(), 10, 50*time.Millisecond); err != nil || len(ds) != 0 {
		t.Fatalf("Fetch: %d deliveries, %v; want none", len(ds), err)
	}
	if n := testutil.ToFloat64(malformed); n != 1 {
		t.Fatalf("malformed = %v, want 1", n)
	}
	if n := inStream(t, e, UplinksStream); n != 0 {
		t.Fatalf("UPLINKS holds %d: moved back", n)
	}
}

// A crash between the copy and the acknowledgement of the original
// delivers the original again, and it is moved again: the stream takes
// the second copy for a duplicate.
func TestMovedTwiceIsOneCopy(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	publish(t, e, newerBatch(t, "NEW", 1))
	src, err := e.UplinkSource(context.Background(), prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := src.cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	m := <-batch.Messages()
	if m == nil {
		t.Fatal("nothing fetched")
	}
	for range 2 {
		if err := src.moveAside(m); err != nil {
			t.Fatal(err)
		}
	}
	if n := inStream(t, e, AsideStream); n != 1 {
		t.Fatalf("%s holds %d copies, want 1", AsideStream, n)
	}
}

// Without UPLINKS_UNREADABLE (NATS lost it, or it could not be made) an
// unreadable message waits in UPLINKS, handed back, as before; the next
// look aside makes the stream again.
func TestWithoutAsideUnreadableWaitsInUplinks(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	ctx := context.Background()
	if err := e.js.DeleteStream(ctx, AsideStream); err != nil {
		t.Fatal(err)
	}
	publish(t, e, newerBatch(t, "NEW", 1))
	malformed := prometheus.NewCounter(prometheus.CounterOpts{Name: "m"})
	src, err := e.UplinkSource(ctx, malformed)
	if err != nil {
		t.Fatal(err)
	}
	src.nextAside = time.Now().Add(time.Hour)
	testwait.For(t, "the unreadable message handed back", func() bool {
		if _, err := src.Fetch(ctx, 10, 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		return testutil.ToFloat64(malformed) == 1
	})
	c, err := e.storeUplink.Consumer(ctx, StorageConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if ci := c.CachedInfo(); ci.NumAckPending != 1 || inStream(t, e, UplinksStream) != 1 {
		t.Fatalf("UPLINKS holds %d, %d pending acknowledgement; want it handed back", inStream(t, e, UplinksStream), ci.NumAckPending)
	}
	src.nextAside = time.Time{}
	if _, err := src.Fetch(ctx, 10, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.Consumer(ctx, AsideStream, AsideConsumer); err != nil {
		t.Fatalf("%s not made again by the look aside: %v", AsideStream, err)
	}
}
