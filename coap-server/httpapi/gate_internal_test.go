package httpapi

import (
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

// Retransmission reports that find a subscriber's queue full are dropped,
// and the subscriber stays connected: anyone can replay an accepted
// datagram, and each copy is a report. An entry that finds it full still
// disconnects it (too slow). Reports used to disconnect it too.
func TestReportsNeverDisconnectASubscriber(t *testing.T) {
	peer := wspeer.New(wspeer.Config{QueueSize: 2}) // not running: nothing drains it
	g := &gate{peer: peer, notices: true, live: true}
	report, err := hub.NewFrame(0, []byte(`{"deviceId":"D","type":"status","data":{"retransmission":{"of_seq":1,"count":2}}}`))
	if err != nil {
		t.Fatal(err)
	}
	sent := 0
	for range 5 {
		if g.Send(report) {
			sent++
		}
	}
	if sent != 2 {
		t.Errorf("%d of 5 reports queued, want the queue's 2", sent)
	}
	select {
	case <-peer.Done():
		t.Fatalf("the subscriber was disconnected by reports: %v", peer.Reason())
	default:
	}
	entry, err := hub.NewFrame(7, []byte(`{"deviceId":"D","type":"uplink"}`))
	if err != nil {
		t.Fatal(err)
	}
	if g.Send(entry) {
		t.Fatal("an entry was queued in a full queue")
	}
	select {
	case <-peer.Done():
	default:
		t.Fatal("an entry that found the queue full left the subscriber connected")
	}
}

// TestReportsDuringTheCatchUpNeverOverflowTheGate: while a subscriber's
// history is sent, a flood of retransmission reports (replayed datagrams)
// is held up to maxHeldNotices and then dropped and counted (Send false),
// and the entries held with them still fit: no overflow, so the catch-up
// need not start reading the stream over. Before, reports counted toward
// maxHeld, and 1,024 of them made the gate drop what it held.
func TestReportsDuringTheCatchUpNeverOverflowTheGate(t *testing.T) {
	g := &gate{peer: wspeer.New(wspeer.Config{}), notices: true}
	report, err := hub.NewFrame(0, []byte(`{"deviceId":"D","type":"status","data":{"retransmission":{"of_seq":1,"count":2}}}`))
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for range 4 * maxHeld {
		if g.Send(report) {
			held++
		}
	}
	if held != maxHeldNotices {
		t.Errorf("%d reports held, want %d (the rest dropped and counted)", held, maxHeldNotices)
	}
	for seq := range uint64(maxHeld) {
		entry, err := hub.NewFrame(seq+1, []byte(`{"deviceId":"D","type":"uplink"}`))
		if err != nil {
			t.Fatal(err)
		}
		g.Send(entry)
	}
	frames, overflow := g.take()
	if overflow || len(frames) != maxHeldNotices+maxHeld {
		t.Fatalf("overflow %v, %d frames held: want no overflow, %d", overflow, len(frames), maxHeldNotices+maxHeld)
	}
}

// bigEntry is a frame of an entry at seq with a message of n bytes.
func bigEntry(t *testing.T, seq uint64, n int) *hub.Frame {
	t.Helper()
	f, err := hub.NewFrame(seq, []byte(`{"deviceId":"D","type":"uplink","message":"`+strings.Repeat("x", n)+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestHeldFramesAreBoundedInBytes: while a subscriber's history is sent,
// its gate holds live entries up to maxHeldBytes of them, far fewer than
// maxHeld when they are large; the next one makes it drop them all
// (overflow: the catch-up reads them from the stream), and it holds
// again from empty. 1,024 entries of 64 KiB were held, 64 MiB.
func TestHeldFramesAreBoundedInBytes(t *testing.T) {
	g := &gate{peer: wspeer.New(wspeer.Config{}), notices: true}
	seq, sent := uint64(0), 0 // frames and bytes sent, up to the first past the bound
	for sent <= maxHeldBytes {
		seq++
		f := bigEntry(t, seq, 60<<10)
		g.Send(f)
		sent += f.Cost
	}
	if seq >= maxHeld {
		t.Fatalf("%d frames to pass the byte bound: the test needs fewer than maxHeld", seq)
	}
	if frames, overflow := g.take(); !overflow {
		t.Fatalf("%d frames held, %d bytes sent (bound %d): want the overflow", len(frames), sent, maxHeldBytes)
	}
	g.Send(bigEntry(t, seq+1, 60<<10))
	if frames, overflow := g.take(); overflow || len(frames) != 1 {
		t.Fatalf("after the overflow: %d frames, overflow %v; want the 1 sent since", len(frames), overflow)
	}
}

// TestLargeReportsDuringTheCatchUpAreBoundedInBytes: reports of the
// largest size are held up to maxHeldNoticeBytes, not maxHeldNotices of
// them (4 MiB); the rest are dropped (Send false, counted by the hub).
func TestLargeReportsDuringTheCatchUpAreBoundedInBytes(t *testing.T) {
	g := &gate{peer: wspeer.New(wspeer.Config{}), notices: true}
	report, err := hub.NewFrame(0, []byte(`{"deviceId":"D","type":"status","message":"`+strings.Repeat("x", 63<<10)+`","data":{"retransmission":{"of_seq":1}}}`))
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for range maxHeldNotices {
		if g.Send(report) {
			held++
		}
	}
	if held*report.Cost > maxHeldNoticeBytes || held == 0 {
		t.Errorf("%d reports of %d bytes held, want at least one and at most %d bytes", held, report.Cost, maxHeldNoticeBytes)
	}
}
