package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// keepNothing takes every uplink at once and keeps nothing, so the heap
// a test measures is the datagram path's own.
type keepNothing struct{ seq atomic.Uint64 }

func (*keepNothing) Stores() bool { return false }
func (*keepNothing) PublishUplink(context.Context, uplink.Accepted, []byte) error {
	return nil
}
func (k *keepNothing) Log(context.Context, *livelog.Entry, string) (uint64, bool, error) {
	return k.seq.Add(1), false, nil
}
func (*keepNothing) LogAsync(*livelog.Entry)           {}
func (*keepNothing) LogAsyncID(*livelog.Entry, string) {}
func (*keepNothing) Behind() bool                      { return false }
func (*keepNothing) LogBehind(*livelog.Entry, string, func(uint64)) error {
	panic("keepNothing: not Behind")
}
func (*keepNothing) Notify(*livelog.Entry) {}

// What the queue charges per datagram is what the heap holds for it,
// within a quarter, for small junk and for uplinks: QueueBytes means what
// it says. (Charging a datagram's length, as before, counted a 20-byte
// datagram as 116 B while it held a 1,536-byte buffer.)
func TestQueueBytesMatchTheHeap(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"20-byte junk with a CoAP header", append([]byte{0x40, 0x02, 0, 0}, make([]byte, 16)...)},
		{"heartbeat uplink", conUplink(t, 1, &nbiotv1.Uplink{DeviceId: "QUEUE-000001", UplinkCount: 1})},
		{"1,200-byte datagram", append([]byte{0x50, 0x02, 0, 0}, make([]byte, 1196)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 20_000
			s, err := NewLeanServer(testHandler(nil), nil, LeanConfig{QueueLen: n, QueueBytes: 1 << 40,
				Metrics: NewLeanMetrics(prometheus.NewRegistry())})
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				// Distinct sources and message IDs, so every one is queued.
				tc.b[2], tc.b[3] = byte(i>>8), byte(i)
				s.receive(tc.b, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 5683))
			}
			if len(s.queue) != n {
				t.Fatalf("%d queued, want %d", len(s.queue), n)
			}
			charged := s.queued.Load()
			// The heap the queue holds is what is freed when the server
			// goes (its fixed parts are small next to n datagrams); this is
			// blind to what earlier tests leave for the collector.
			full := heapAfterGC()
			runtime.KeepAlive(s)
			s = nil
			heap := full - heapAfterGC()
			t.Logf("%d datagrams of %d B: heap %d B (%.0f B each), charged %d B (%.0f B each)",
				n, len(tc.b), heap, float64(heap)/n, charged, float64(charged)/n)
			if heap > charged*5/4 || heap < charged/2 {
				t.Errorf("heap %d B for %d B charged: the queue's accounting is off", heap, charged)
			}
		})
	}
}

// floodSources is how many distinct source addresses the flood comes from.
const floodSources = 100_000

// A flood from 100,000 distinct source addresses (127.1.0.0 onwards on
// loopback: each bound, sent from once and closed, as spoofed addresses
// look to us), three in four a CON uplink naming a new device and one in
// four junk, while an established device keeps sending CON uplinks:
//
//   - the device is answered every time, within CoAP's retransmissions
//     (RFC 7252 §4.8: ACK_TIMEOUT 2 s, up to MAX_RETRANSMIT 4);
//   - what the datagram path holds stays under its configured bounds, by
//     its own accounting (queued bytes ≤ QueueBytes, Dedup ≤ its bytes)
//     and on the heap (the live heap grows by at most the two bounds and
//     a fixed allowance for the workers and the sockets).
//
// There is no per-peer cap to test because the plain path keeps no state
// per source address beyond its exchanges in flight: Dedup is keyed by
// device, message ID, token and payload (bounded in bytes, oldest first,
// evictions counted in nbiot_dedup_evictions_total); the in-flight set
// and each source's byte count live only from receive to answer and are
// charged to QueueBytes. A new source costs what
// its datagram does while queued, and nothing once answered. (go-coap's UDP
// server kept a session and a goroutine of 6–10 KB per source for 60 s:
// 100,000 sources, 0.6–1 GB.)
func TestSpoofedFloodMemoryBound(t *testing.T) {
	const (
		queueBytes = 1 << 20
		// dedupBytes holds about 6,000 answers (~86 B each). The flood's
		// 75,000 uplinks must overrun it even on a loaded CI machine, where
		// most are dropped at the queue's bound (18,432 were accepted once,
		// when the bound was 2 MiB, ~24,000 answers, and was not reached).
		dedupBytes = 512 << 10
		// allowance: the pool's spare datagrams (at most a queue's worth,
		// kept until the second GC after they were released), the
		// workers' scratch space (64 × ~2 KiB), the in-flight set's table
		// (it keeps its size), and the garbage a GC cycle marks live
		// while it runs.
		allowance = queueBytes + 2<<20
	)
	h := testHandler(nil)
	h.Stream = &keepNothing{}
	h.Dedup = NewDedup(dedupBytes, 0)
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewLeanServer(h, conn, LeanConfig{QueueBytes: queueBytes, Metrics: NewLeanMetrics(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	defer func() {
		s.Stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	server := s.Addr().AddrPort()

	// Before the flood: one uplink through, so the lazily built parts exist.
	dev := newDevice(t, server)
	if _, err := dev.uplink(0); err != nil {
		t.Fatal(err)
	}
	baseline := liveHeap(true)

	var (
		floodDone     atomic.Bool
		peakHeap      atomic.Int64
		peakQueue     atomic.Int64
		peakDedup     atomic.Int64
		peakInflight  atomic.Int64
		wg            sync.WaitGroup
		deviceUplinks int
		retransmitted int
		deviceErr     error
	)
	sample := func() {
		peakHeap.Store(max(peakHeap.Load(), liveHeap(false)))
		peakQueue.Store(max(peakQueue.Load(), s.queued.Load()))
		peakDedup.Store(max(peakDedup.Load(), h.Dedup.Bytes()))
		peakInflight.Store(max(peakInflight.Load(), int64(s.inflight.len())))
	}
	wg.Add(1)
	go func() { // the established device, until the flood is over
		defer wg.Done()
		for n := uint32(1); !floodDone.Load() || n <= 20; n++ {
			tries, err := dev.uplink(n)
			if err != nil {
				deviceErr = fmt.Errorf("uplink %d: %w", n, err)
				return
			}
			deviceUplinks++
			retransmitted += tries - 1
		}
	}()
	const senders = 2
	errs := make(chan error, senders)
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), floodSources))
			buf := make([]byte, 512)
			for i := g; i < floodSources; i += senders {
				b := floodDatagram(t, rng, i, buf)
				if err := sendFrom(floodAddr(i), server, b); err != nil {
					errs <- fmt.Errorf("source %d: %w", i, err)
					return
				}
				if i%1000 < senders {
					sample()
				}
			}
			errs <- nil
		}()
	}
	for range senders {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	sample()
	floodDone.Store(true)
	wg.Wait()
	if deviceErr != nil {
		t.Fatalf("the established device: %v", deviceErr)
	}

	lm := s.m
	accepted := testutil.ToFloat64(h.Metrics.Accepted)
	evicted := testutil.ToFloat64(h.Metrics.DedupEvictions)
	t.Logf("flood of %d sources: %.0f uplinks accepted, %.0f dropped at the queue's bound, %.0f junk; dedup evictions %.0f",
		floodSources, accepted, testutil.ToFloat64(lm.full), testutil.ToFloat64(lm.junk), evicted)
	t.Logf("peaks: live heap +%d KiB (baseline %d KiB), queue %d KiB of %d, dedup %d KiB of %d, in flight %d",
		(peakHeap.Load()-baseline)>>10, baseline>>10, peakQueue.Load()>>10, queueBytes>>10,
		peakDedup.Load()>>10, dedupBytes>>10, peakInflight.Load())
	t.Logf("the device: %d uplinks answered, %d retransmissions", deviceUplinks, retransmitted)
	if evicted == 0 {
		t.Errorf("the flood's uplinks never reached Dedup's bound (%.0f accepted): the bound was not exercised", accepted)
	}
	if q := peakQueue.Load(); q > queueBytes {
		t.Errorf("queue held %d B, over its %d B bound", q, queueBytes)
	}
	if d := peakDedup.Load(); d > dedupBytes {
		t.Errorf("Dedup held %d B, over its %d B bound", d, dedupBytes)
	}
	if n, bound := peakInflight.Load(), int64(s.cfg.QueueLen+s.cfg.Workers); n > bound {
		t.Errorf("%d exchanges in flight, over queue and workers (%d)", n, bound)
	}
	if grew := peakHeap.Load() - baseline; grew > queueBytes+dedupBytes+allowance {
		t.Errorf("live heap grew by %d KiB, over the bounds (%d KiB) and the allowance (%d KiB)",
			grew>>10, (queueBytes+dedupBytes)>>10, allowance>>10)
	}
}

// heapAfterGC is the heap in use once two collections (the second empties
// sync.Pool's victim cache) have run.
func heapAfterGC() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// liveHeap is the heap marked live by the last GC cycle (after a forced
// one with gc).
func liveHeap(gc bool) int64 {
	if gc {
		runtime.GC()
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	return int64(sample[0].Value.Uint64())
}

// floodAddr is the i-th flood source: 127.1.0.0 onwards, never 127.0.0.1
// (the server and the device).
func floodAddr(i int) [4]byte {
	n := 1<<16 + i
	return [4]byte{127, byte(n >> 16), byte(n >> 8), byte(n)}
}

// floodDatagram is source i's datagram: a CON uplink of a device of its
// own (three in four), else junk, a CoAP header or not.
func floodDatagram(t testing.TB, rng *rand.Rand, i int, buf []byte) []byte {
	if i%4 != 3 {
		u := &nbiotv1.Uplink{DeviceId: fmt.Sprintf("FLOOD-%06d", i), UplinkCount: 1}
		payload, err := proto.Marshal(u)
		if err != nil {
			t.Error(err)
		}
		m := message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: int32(uint16(i)), Token: []byte{byte(i), byte(i >> 8)},
			Payload: payload, Options: message.Options{{ID: message.URIPath, Value: []byte("uplink")}}}
		n, err := coder.DefaultCoder.Encode(m, buf)
		if err != nil {
			t.Error(err)
		}
		return buf[:n]
	}
	b := buf[:1+rng.IntN(120)]
	for j := range b {
		b[j] = byte(rng.Uint32())
	}
	if rng.IntN(2) == 0 {
		b[0] = 0x40 | b[0]&0x3f
	}
	return b
}

// sendFrom sends b to server from a socket bound to src, then closes it:
// the source is never heard from again, like a spoofed one.
func sendFrom(src [4]byte, server netip.AddrPort, b []byte) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: src}); err != nil {
		return err
	}
	return syscall.Sendto(fd, b, 0, &syscall.SockaddrInet4{Addr: server.Addr().As4(), Port: int(server.Port())})
}

// device is an established device: one socket, CON uplinks retransmitted
// as RFC 7252 §4.2 and §4.8 ask.
type device struct {
	t    testing.TB
	conn *net.UDPConn
	in   []byte
}

func newDevice(t testing.TB, server netip.AddrPort) *device {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &device{t: t, conn: c, in: make([]byte, 2048)}
}

// uplink sends uplink n as a CON until its ACK arrives: the first wait is
// ACK_TIMEOUT (2 s), doubled at each of up to MAX_RETRANSMIT (4)
// retransmissions (§4.8). It returns the transmissions it took.
func (d *device) uplink(n uint32) (int, error) {
	b := conUplink(d.t, uint16(n), &nbiotv1.Uplink{DeviceId: "ESTABLISHED-1", UplinkCount: n})
	wait := 2 * time.Second
	for tries := 1; tries <= 5; tries++ {
		if _, err := d.conn.Write(b); err != nil {
			return tries, err
		}
		deadline := time.Now().Add(wait)
		for {
			_ = d.conn.SetReadDeadline(deadline)
			k, err := d.conn.Read(d.in)
			if err != nil {
				break // time to retransmit
			}
			m := message.Message{Options: make(message.Options, 0, 4)}
			if _, err := coder.DefaultCoder.Decode(d.in[:k], &m); err == nil && m.Type == message.Acknowledgement && m.MessageID == int32(uint16(n)) {
				if m.Code != codes.Changed {
					return tries, fmt.Errorf("answered %v", m.Code)
				}
				return tries, nil
			}
		}
		wait *= 2
	}
	return 5, fmt.Errorf("no answer after 5 transmissions (RFC 7252 §4.8)")
}
