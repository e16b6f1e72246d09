package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// TestUnreadableMessagesStayInUplinks: what a newer coap-server writes to
// the same NATS during a rolling deploy (a batch subject this version does
// not know, a record version it cannot decode, alone or inside a batch) is
// neither acknowledged nor terminated (on a work queue both delete an
// uplink that was answered 2.04): it stays in UPLINKS, handed back for a
// later delivery (to a newer instance), and is counted once per delivery;
// the readable messages next to it are stored as usual. Before, the three
// were terminated and UPLINKS was emptied.
func TestUnreadableMessagesStayInUplinks(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	ctx := context.Background()
	record := func(device string, i int) (uuid.UUID, []byte) {
		a, payload := accepted(t, device, uint32(i))
		return a.ID, uplink.AppendMessage(nil, a, payload)
	}
	future := func(rec []byte) []byte { return append([]byte{3}, rec[1:]...) } // a record version 3

	want := map[uuid.UUID]bool{}
	var msgs []*nats.Msg
	// A newer version's batch subject.
	_, r := record("NEW", 1)
	msgs = append(msgs, &nats.Msg{Subject: uplinkSubject + "batch.v2", Data: appendRecord(nil, r)})
	// Readable: a batch of two, then one uplink on its device's subject.
	id1, r1 := record("OK", 1)
	id2, r2 := record("OK", 2)
	msgs = append(msgs, &nats.Msg{Subject: batchSubject, Data: appendRecord(appendRecord(nil, r1), r2)})
	want[id1], want[id2] = true, true
	// A batch with one record of a newer version before a readable one.
	_, r3 := record("NEW", 2)
	_, r4 := record("NEW", 3)
	msgs = append(msgs, &nats.Msg{Subject: batchSubject, Data: appendRecord(appendRecord(nil, future(r3)), r4)})
	id5, r5 := record("OK1", 3)
	msgs = append(msgs, &nats.Msg{Subject: uplinkSubject + "OK1", Data: r5})
	want[id5] = true
	// One uplink of a newer record version on a device's subject.
	_, r6 := record("NEW", 4)
	msgs = append(msgs, &nats.Msg{Subject: uplinkSubject + "NEW", Data: future(r6)})
	for _, m := range msgs {
		if _, err := e.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	const unreadable = 3

	malformed := prometheus.NewCounter(prometheus.CounterOpts{Name: "m"})
	src, err := e.UplinkSource(ctx, malformed)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uuid.UUID]bool{}
	var wrong []string // delivered, not one of the readable uplinks
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && testutil.ToFloat64(malformed) < unreadable; {
		ds, err := src.Fetch(ctx, 10, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if !want[d.Accepted.ID] {
				wrong = append(wrong, d.Accepted.DeviceID)
			} else {
				got[d.Accepted.ID] = true
			}
			if err := d.Ack(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := testutil.ToFloat64(malformed); n != unreadable {
		t.Fatalf("malformed = %v after every message was fetched, want %d", n, unreadable)
	}
	held := func() uint64 {
		n, err := e.UplinksHeld(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	testwait.ForState(t, fmt.Sprintf("UPLINKS holding the %d unreadable messages once the readable ones were acknowledged", unreadable), func() (bool, string) {
		n := held()
		return n == unreadable, fmt.Sprintf("UPLINKS holds %d messages", n)
	}, testwait.Within(3*time.Second))

	// Handed back for later: pending acknowledgement, not delivered again
	// at once (no spinning), and not counted again. (The fetch also lets
	// every acknowledgement settle: held passes 3 on its way to 0 when
	// the unreadable ones are deleted.)
	ds, err := src.Fetch(ctx, 10, 300*time.Millisecond)
	if err != nil || len(ds) != 0 {
		t.Fatalf("Fetch after: %d deliveries, %v; want none", len(ds), err)
	}
	if n := held(); n != unreadable {
		t.Fatalf("UPLINKS holds %d messages, want the %d unreadable ones", n, unreadable)
	}
	info, err := e.storeUplink.Consumer(ctx, StorageConsumer)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := info.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ci.NumAckPending != unreadable || ci.NumPending != 0 {
		t.Fatalf("consumer: %d pending acknowledgement, %d pending; want the %d unreadable ones handed back with a delay", ci.NumAckPending, ci.NumPending, unreadable)
	}
	if n := testutil.ToFloat64(malformed); n != unreadable {
		t.Fatalf("malformed = %v, want %d: delivered again at once", n, unreadable)
	}
	if len(got) != len(want) || len(wrong) > 0 {
		t.Fatalf("%d of the %d readable uplinks delivered, and %d of unreadable messages (%v)", len(got), len(want), len(wrong), wrong)
	}
}
