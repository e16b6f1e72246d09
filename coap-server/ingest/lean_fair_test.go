package ingest

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// One source cannot put its backlog ahead of the others: what it has
// waiting or being answered past SourceBytes goes to the overflow lane,
// which workers take only when the queue proper is empty and which
// holds half of QueueBytes; past that its excess is dropped and counted.
// Another source's datagram is answered after at most the first source's
// share, not after everything it sent. (Before, one FIFO served every
// source: a source keeping 512 uplinks in flight put another device's p99
// at 30 ms on the lean path and 220 ms on coap-server; scripts/coapbench
// -chatty-k 512.)
func TestSourceShareOfTheQueue(t *testing.T) {
	const share, overflow = 10, 100
	charge := int64(datagramBuffer + datagramOverhead) // an uplink's
	s, err := NewLeanServer(testHandler(nil), nil, LeanConfig{QueueLen: 1000, QueueBytes: 2 * overflow * charge,
		SourceBytes: share * charge, Metrics: NewLeanMetrics(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	chatty := netip.MustParseAddrPort("192.0.2.1:5683")
	other := netip.MustParseAddrPort("192.0.2.2:5683")
	const sent = 200
	for i := range uint16(sent) {
		s.receive(conUplink(t, i, &nbiotv1.Uplink{DeviceId: "CHATTY-1", UplinkCount: uint32(i)}), chatty)
	}
	s.receive(conUplink(t, 7, &nbiotv1.Uplink{DeviceId: "OTHER-1", UplinkCount: 1}), other)
	if n := testutil.ToFloat64(s.m.sourceShare); n != sent-share-overflow {
		t.Errorf("source_share drops = %v, want %d", n, sent-share-overflow)
	}
	if n := testutil.ToFloat64(s.m.full); n != 0 {
		t.Errorf("queue_full drops = %v, want 0: the other source had room", n)
	}
	// The workers' order: the chatty source's share and the other source's
	// datagram, then the chatty source's overflow.
	ex := newExchange(s)
	var to []netip.AddrPort
	s.send = func(_ []byte, addr netip.AddrPort) { to = append(to, addr) }
	for range share + 1 + overflow {
		d, _ := s.next()
		s.dequeued(d)
		ex.serve(d)
		s.leave(d)
		s.release(d)
	}
	if len(to) != share+1+overflow {
		t.Fatalf("%d answers, want %d", len(to), share+1+overflow)
	}
	for i, addr := range to {
		if addr == other && i > share {
			t.Errorf("the other source answered %d-th, after the chatty source's overflow", i+1)
		}
	}
	if !slices.Contains(to[:share+1], other) {
		t.Errorf("the other source not among the first %d answers", share+1)
	}
	if n, q := s.inflight.len(), s.queued.Load(); n != 0 || q != 0 || s.over.Load() != 0 {
		t.Errorf("left: %d in flight, %d B queued, %d B in overflow", n, q, s.over.Load())
	}
	if n := len(s.inflight.bySource); n != 0 {
		t.Errorf("%d sources still charged", n)
	}
}

// Only the workers started for it take the overflow lane (an eighth): the
// others read the queue proper alone, so a busy source's backlog never
// holds them.
func TestOverflowTakesAnEighthOfTheWorkers(t *testing.T) {
	s, err := NewLeanServer(testHandler(nil), nil, LeanConfig{QueueLen: 10, SourceBytes: 1,
		Metrics: NewLeanMetrics(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	s.send = func([]byte, netip.AddrPort) {}
	from := netip.MustParseAddrPort("192.0.2.3:5683")
	s.receive(conUplink(t, 1, &nbiotv1.Uplink{DeviceId: "OVER-1", UplinkCount: 1}), from)
	if len(s.overflow) != 1 {
		t.Fatalf("%d in overflow, want 1", len(s.overflow))
	}
	close(s.queue)
	close(s.overflow)
	s.workers.Add(1)
	s.work(false) // returns once the queue proper is closed and empty
	if len(s.overflow) != 1 {
		t.Fatal("a worker not started for the overflow lane took from it")
	}
	s.workers.Add(1)
	s.work(true)
	if len(s.overflow) != 0 {
		t.Fatal("the overflow worker left the lane unserved")
	}
}
