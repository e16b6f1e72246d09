package stream

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// fullBatches publishes msgs batch messages filled as the batcher fills
// them under load, of uplinks of about 1 KiB (a scan of 44 access points),
// and returns the length of one record.
func fullBatches(t *testing.T, e *Engine, msgs int) int {
	t.Helper()
	u := &nbiotv1.Uplink{DeviceId: "FLOOD", UplinkCount: 1}
	for i := range 44 {
		u.WifiAps = append(u.WifiAps, &nbiotv1.WifiAp{Bssid: []byte{1, 2, 3, 4, 5, byte(i)}, Rssi: -60, Channel: 6})
	}
	payload, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	recLen := 0
	for range msgs {
		var data []byte
		for n := 0; n < maxBatchUplinks; n++ {
			a := uplink.Accepted{ID: uuid.New(), DeviceID: "FLOOD", ReceivedAt: time.Now(), Uplink: u}
			rec := uplink.AppendMessage(nil, a, payload)
			if len(data)+len(rec)+binary.MaxVarintLen32 > maxBatchBytes {
				break
			}
			recLen = len(rec)
			data = appendRecord(data, rec)
		}
		if _, err := e.js.PublishMsg(context.Background(), &nats.Msg{Subject: batchSubject, Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	return recLen
}

// TestFetchIsBoundedInBytes: with a backlog of full batch messages of 1 KiB
// uplinks, one Fetch(500) returns at most 500 and decodes about that many,
// not every uplink of up to 500 messages. The estimate of uplinks per
// message was 1 after a quiet spell (one uplink per message), so one fetch
// asked for 501 messages, decoded ~24,000 uplinks (24 MiB of records, heap
// +130 MiB) and held all but 500 of them in rest. Now a fetch takes at most
// about 1 MiB (the byte budget of 500 uplinks, never below the server's
// max_payload), whatever the estimate says, and the estimate starts at a
// full batch.
func TestFetchIsBoundedInBytes(t *testing.T) {
	const (
		limit = 500
		// What one Fetch may take from the stream: the budget of 500
		// uplinks (2 KiB each) or the embedded server's max_payload of 1
		// MiB, and the wire overhead.
		maxFetched = 1<<20 + 8<<10
		maxHeap    = 32 << 20
	)
	for _, quiet := range []bool{false, true} {
		t.Run(fmt.Sprintf("after_quiet_spell=%v", quiet), func(t *testing.T) {
			e := openEmbedded(t, Config{Storage: true})
			recLen := fullBatches(t, e, 400)
			held, _ := e.UplinksHeld(context.Background())
			src, err := e.UplinkSource(context.Background(), prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
			if err != nil {
				t.Fatal(err)
			}
			if quiet {
				src.mu.Lock()
				src.perMsg = 1 // as learnt from messages of one uplink each
				src.mu.Unlock()
			}
			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			ds, err := src.Fetch(context.Background(), limit, 200*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			runtime.GC()
			runtime.ReadMemStats(&m1)
			src.mu.Lock()
			parked := len(src.rest)
			src.mu.Unlock()
			runtime.KeepAlive(ds)
			grew := int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
			fetched := (len(ds) + parked) * recLen
			t.Logf("%d messages of %d-byte records in UPLINKS; Fetch(%d) returned %d, parked %d (%d KiB of records taken, %d KiB parked); heap +%.1f MiB",
				held, recLen, limit, len(ds), parked, fetched>>10, parked*recLen>>10, float64(grew)/(1<<20))
			switch {
			case len(ds) > limit:
				t.Fatalf("Fetch(%d) returned %d", limit, len(ds))
			case len(ds) < limit*3/4:
				t.Fatalf("Fetch(%d) returned %d with a backlog waiting: batching lost", limit, len(ds))
			case fetched > maxFetched:
				t.Fatalf("one Fetch took %d KiB of records (%d uplinks), more than its %d KiB budget; %d KiB parked",
					fetched>>10, len(ds)+parked, maxFetched>>10, parked*recLen>>10)
			case grew > maxHeap:
				t.Fatalf("heap grew %.1f MiB in one Fetch, want at most %d MiB", float64(grew)/(1<<20), maxHeap>>20)
			}
		})
	}
}

// TestParkedUplinksKeptAlive: the uplinks of a batch message beyond what
// a Fetch asked for wait in rest for the next Fetch, which may be long
// (both workers retrying a write while the database is down). Their
// message is marked in progress meanwhile, so it is not delivered again
// to another instance after the consumer's AckWait (and held twice).
func TestParkedUplinksKeptAlive(t *testing.T) {
	// Long enough that a keep-alive (every quarter of it) delayed on a
	// loaded machine still comes in time.
	const redeliver = 3 * time.Second
	e := openEmbedded(t, Config{Storage: true, RedeliverAfter: redeliver})
	ctx := context.Background()
	var data []byte
	for i := range 20 {
		a, payload := accepted(t, "PARK", uint32(i))
		data = appendRecord(data, uplink.AppendMessage(nil, a, payload))
	}
	if _, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: batchSubject, Data: data}); err != nil {
		t.Fatal(err)
	}
	src, err := e.UplinkSource(ctx, prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		t.Fatal(err)
	}
	other, err := e.UplinkSource(ctx, prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := src.Fetch(ctx, 5, time.Second)
	if err != nil || len(ds) != 5 {
		t.Fatalf("Fetch(5): %d, %v", len(ds), err)
	}
	for _, d := range ds {
		_ = d.Ack()
	}
	time.Sleep(redeliver*5/2 + 100*time.Millisecond) // the 15 parked
	if ds, err := other.Fetch(ctx, 50, 300*time.Millisecond); err != nil || len(ds) != 0 {
		t.Fatalf("another instance got %d uplinks (%v) after AckWait: the parked message was delivered again", len(ds), err)
	}
	got := drain(t, src, 15, 50)
	if len(got) != 15 {
		t.Fatalf("%d parked uplinks delivered, want 15", len(got))
	}
	waitEmpty(t, e)
}

// The least a fetch may take is the largest UPLINKS message, the stream's
// MaxMsgSize, not the server's max_payload: an external server with a
// larger max_payload (8 MiB) made every fetch take up to that much.
// (Found in a review.)
func TestFetchFloorIsTheStreamsLargestMessage(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true})
	src, err := e.UplinkSource(context.Background(), prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		t.Fatal(err)
	}
	largest := int(e.uplinks.CachedInfo().Config.MaxMsgSize)
	if int64(largest) >= e.store.MaxPayload() {
		t.Fatalf("MaxMsgSize %d not below max_payload %d: the test shows nothing", largest, e.store.MaxPayload())
	}
	if src.maxMsg > largest+fetchWireOverhead {
		t.Fatalf("fetch floor %d B, want at most the largest UPLINKS message (%d B) and its wire overhead", src.maxMsg, largest)
	}
}
