package stream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// drain fetches from src until it has want deliveries (or 20 fetches in a
// row came back empty), acknowledging each, and returns them.
func drain(t *testing.T, src *UplinkSource, want, limit int) []storage.Delivery {
	t.Helper()
	var all []storage.Delivery
	for empty := 0; len(all) < want && empty < 20; {
		ds, err := src.Fetch(context.Background(), limit, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) > limit {
			t.Fatalf("Fetch(%d) returned %d deliveries", limit, len(ds))
		}
		if len(ds) == 0 {
			empty++
		} else {
			empty = 0
		}
		for _, d := range ds {
			if err := d.Ack(); err != nil {
				t.Fatal(err)
			}
		}
		all = append(all, ds...)
	}
	return all
}

// TestConcurrentUplinksShareMessages: uplinks published at once go out in
// fewer messages than uplinks (the group commit), every one is delivered to
// storage exactly once with its ID and key, within each Fetch's limit,
// and the stream is empty once they are all acknowledged.
func TestConcurrentUplinksShareMessages(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	ctx := context.Background()
	const workers, per = 32, 50
	sent := make(map[uuid.UUID][16]byte)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				dev := fmt.Sprintf("D%d", w)
				a, payload := accepted(t, dev, uint32(i))
				a.Key = MsgKey(dev, int32(i), nil, payload)
				if err := e.PublishUplink(ctx, a, payload); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				sent[a.ID] = a.Key
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	info, err := e.uplinks.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := workers * per; info.State.Msgs >= uint64(n) {
		t.Fatalf("%d uplinks from %d concurrent publishers went out in %d messages: not batched", n, workers, info.State.Msgs)
	}
	t.Logf("%d uplinks in %d messages", workers*per, info.State.Msgs)

	src, err := e.UplinkSource(ctx, prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, src, workers*per, 37)
	seen := make(map[uuid.UUID]bool)
	for _, d := range got {
		key, ok := sent[d.Accepted.ID]
		switch {
		case !ok:
			t.Fatalf("delivered an uplink never published: %v", d.Accepted.ID)
		case seen[d.Accepted.ID]:
			t.Fatalf("uplink %v delivered twice", d.Accepted.ID)
		case d.Accepted.Key != key:
			t.Fatalf("uplink %v lost its key", d.Accepted.ID)
		}
		seen[d.Accepted.ID] = true
	}
	if len(seen) != len(sent) {
		t.Fatalf("delivered %d of %d uplinks", len(seen), len(sent))
	}
	waitEmpty(t, e)
}

func waitEmpty(t *testing.T, e *Engine) {
	t.Helper()
	// Acknowledgements are not answered: poll the stream's state.
	testwait.For(t, "UPLINKS empty once every uplink was acknowledged", func() bool {
		n, err := e.UplinksHeld(context.Background())
		return err == nil && n == 0
	})
}

// TestBatchAckedWhenAllItsUplinksAre: a batch message stays in the stream
// until the last of its uplinks is acknowledged, and a Nak of one hands
// the whole message back (all of its uplinks are delivered again).
func TestBatchAckedWhenAllItsUplinksAre(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	ctx := context.Background()
	var recs []byte
	for i := range 3 {
		a, payload := accepted(t, "B1", uint32(i))
		recs = appendRecord(recs, uplink.AppendMessage(nil, a, payload))
	}
	if _, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: batchSubject, Data: recs}); err != nil {
		t.Fatal(err)
	}
	src, err := e.UplinkSource(ctx, prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := src.Fetch(ctx, 2, time.Second)
	if err != nil || len(ds) != 2 {
		t.Fatalf("Fetch(2): %d deliveries, %v", len(ds), err)
	}
	for _, d := range ds {
		_ = d.Ack()
	}
	if n, err := e.UplinksHeld(ctx); err != nil || n != 1 {
		t.Fatalf("after 2 of 3 acks UPLINKS holds %d messages (%v), want 1", n, err)
	}
	ds, err = src.Fetch(ctx, 10, time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("second Fetch: %d deliveries (want the third uplink, held), %v", len(ds), err)
	}
	if err := ds[0].Nak(); err != nil {
		t.Fatal(err)
	}
	again := drain(t, src, 3, 10)
	if len(again) != 3 {
		t.Fatalf("after a Nak, %d uplinks delivered again, want the batch's 3", len(again))
	}
	waitEmpty(t, e)
}

// TestVersion1MessagesStillStored: a stream filled by the version before
// batching (one uplink per message, on the device's subject, no key) is
// still delivered after an upgrade; junk is counted and moved aside,
// never deleted (uplinks_unknown_test.go).
func TestVersion1MessagesStillStored(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	ctx := context.Background()
	a, payload := accepted(t, "OLD", 1)
	v1 := uplink.AppendMessage(nil, a, payload)
	v1 = append([]byte{1, v1[1]}, append(v1[2:18], v1[34:]...)...) // drop the key: version 1
	if _, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: uplinkSubject + "OLD", Data: v1}); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*nats.Msg{{Subject: uplinkSubject + "JUNK", Data: []byte("junk")}, {Subject: batchSubject, Data: []byte{0xff}}} {
		if _, err := e.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	malformed := prometheus.NewCounter(prometheus.CounterOpts{Name: "m"})
	src, err := e.UplinkSource(ctx, malformed)
	if err != nil {
		t.Fatal(err)
	}
	src.nextAside = time.Now().Add(time.Hour) // each counted once
	got := drain(t, src, 1, 10)
	if len(got) != 1 || got[0].Accepted.ID != a.ID || got[0].Accepted.Key != ([16]byte{}) {
		t.Fatalf("got %+v, want the version 1 uplink %v without a key", got, a.ID)
	}
	if n := testutil.ToFloat64(malformed); n != 2 {
		t.Fatalf("malformed = %v, want 2", n)
	}
	testwait.For(t, "the 2 junk messages moved to "+AsideStream+" once the uplink was acknowledged", func() bool {
		return inStream(t, e, UplinksStream) == 0 && inStream(t, e, AsideStream) == 2
	})
}

// TestBatchFullIsErrFullForEachUplink: past UPLINKS_MAX_BYTES every uplink
// of the refused batch gets ErrFull.
func TestBatchFullIsErrFullForEachUplink(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true, UplinksBytes: 4096})
	ctx := context.Background()
	var wg sync.WaitGroup
	var full sync.Map
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				a, payload := accepted(t, "F", uint32(w*40+i))
				if err := e.PublishUplink(ctx, a, payload); errors.Is(err, ErrFull) {
					full.Store(w, true)
					return
				} else if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	n := 0
	full.Range(func(any, any) bool { n++; return true })
	if n != 16 {
		t.Fatalf("%d of 16 publishers saw ErrFull", n)
	}
}

func FuzzSplitBatch(f *testing.F) {
	f.Add(appendRecord(appendRecord(nil, []byte("ab")), []byte("c")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{5, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var recs [][]byte
		if err := splitBatch(b, func(r []byte) { recs = append(recs, r) }); err != nil {
			return
		}
		var again []byte
		for _, r := range recs {
			again = appendRecord(again, r)
		}
		if len(again) > len(b) {
			t.Fatalf("%d records re-encode to %d bytes, more than the %d read", len(recs), len(again), len(b))
		}
	})
}
