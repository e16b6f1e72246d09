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

// TestUnreadableMessagesMoveAside: what a newer coap-server writes to the
// same NATS during a rolling deploy (a batch subject this version does not
// know, a record version it cannot decode, alone or inside a batch) is
// neither deleted unstored nor left where it counts in the storage
// consumer's acknowledgements pending: it is moved to UPLINKS_UNREADABLE
// whole, with its subject, for a version that can read it, and counted
// once; the readable messages next to it are stored as usual. Before, the
// three stayed pending in UPLINKS (20,000 of them stopped storage).
func TestUnreadableMessagesMoveAside(t *testing.T) {
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
	src.nextAside = time.Now().Add(time.Hour) // no look at what was moved: each counted once
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
	testwait.ForState(t, fmt.Sprintf("the %d unreadable messages in %s, none in UPLINKS", unreadable, AsideStream), func() (bool, string) {
		up, aside := inStream(t, e, UplinksStream), inStream(t, e, AsideStream)
		return up == 0 && aside == unreadable, fmt.Sprintf("UPLINKS holds %d, %s %d", up, AsideStream, aside)
	}, testwait.Within(3*time.Second))
	cons, err := e.storeUplink.Consumer(ctx, StorageConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if ci := cons.CachedInfo(); ci.NumAckPending != 0 || ci.NumPending != 0 {
		t.Fatalf("storage consumer: %d pending acknowledgement, %d pending; want none", ci.NumAckPending, ci.NumPending)
	}
	// Whole, with the subject each had in UPLINKS.
	subjects := map[string]int{}
	for seq := uint64(1); seq <= unreadable; seq++ {
		m, err := e.js.Stream(ctx, AsideStream)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := m.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		subjects[raw.Header.Get(SubjectHeader)]++
		found := false
		for _, orig := range msgs {
			found = found || (orig.Subject == raw.Header.Get(SubjectHeader) && string(orig.Data) == string(raw.Data))
		}
		if !found {
			t.Fatalf("%s message %d (subject %q) is none of those published", AsideStream, seq, raw.Header.Get(SubjectHeader))
		}
	}
	if subjects[uplinkSubject+"batch.v2"] != 1 || subjects[batchSubject] != 1 || subjects[uplinkSubject+"NEW"] != 1 {
		t.Fatalf("subjects moved aside: %v", subjects)
	}
	if n := testutil.ToFloat64(malformed); n != unreadable {
		t.Fatalf("malformed = %v, want %d", n, unreadable)
	}
	if len(got) != len(want) || len(wrong) > 0 {
		t.Fatalf("%d of the %d readable uplinks delivered, and %d of unreadable messages (%v)", len(got), len(want), len(wrong), wrong)
	}
}

// inStream is the number of messages in stream name.
func inStream(t *testing.T, e *Engine, name string) uint64 {
	t.Helper()
	s, err := e.js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.Msgs
}
