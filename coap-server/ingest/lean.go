package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
)

// Defaults of LeanConfig.
const (
	// DefaultLeanWorkers: an uplink waits ~100 µs for the stream's two
	// acknowledgements, so the workers are mostly waiting, not computing;
	// 64 keep a 2-core machine busy at well past the load one socket takes.
	DefaultLeanWorkers = 64
	// DefaultLeanQueueLen bounds the datagrams waiting for a worker.
	DefaultLeanQueueLen = 8192
	// DefaultLeanReadBuffer: 4 MiB, a few thousand small datagrams.
	DefaultLeanReadBuffer = 4 << 20
	// DefaultLeanDrain is how long Stop lets queued datagrams be answered.
	DefaultLeanDrain = 5 * time.Second
	// maxDatagram is the largest UDP payload (65,535 less the IPv4 and UDP
	// headers); the read buffer holds one, so nothing is truncated.
	maxDatagram = 65507
	// datagramOverhead is what a queued datagram costs besides its buffer:
	// the struct (144 B), its slot in the queue (8 B), its entry in the
	// in-flight set and its source's (~180 B with the tables' spare room),
	// charged to QueueBytes with the buffer's capacity;
	// TestQueueBytesMatchTheHeap checks it against the heap.
	datagramOverhead = 336
	// sourceShare: one source may hold this fraction of QueueBytes.
	sourceShare = 256
	// datagramBuffer is the capacity of a pooled datagram's buffer: an
	// uplink (~100-300 B) fits. A larger datagram gets a buffer of its
	// own, dropped on release, so a small one is never charged for it.
	datagramBuffer = 512
)

// LeanConfig configures a LeanServer. Zero fields take the defaults.
type LeanConfig struct {
	// Workers answer datagrams (default DefaultLeanWorkers).
	Workers int
	// QueueLen and QueueBytes bound the datagrams waiting for a worker, in
	// count and in bytes (defaults DefaultLeanQueueLen and
	// DefaultQueueBytes(), a share of ProcessMemory). A datagram over either bound is dropped and
	// counted: a CON is retransmitted by the device (RFC 7252 §4.2).
	QueueLen   int
	QueueBytes int64
	// SourceBytes is one source endpoint's (address and port) share of
	// the queue: what it may have waiting or being answered before its
	// datagrams go to the overflow lane (default QueueBytes/256, ~40
	// uplinks). An eighth of the workers take the overflow lane, only when
	// the queue proper is empty, and it holds at most half of
	// QueueBytes; past that, an
	// over-share datagram is dropped and counted. So one busy source
	// cannot put its backlog ahead of other devices, and is still served
	// flat out when they are quiet. A device has one exchange outstanding
	// (RFC 7252 §4.7, NSTART 1); a proxy or relay speaking for many
	// devices from one endpoint gets ~40 before it waits behind them.
	SourceBytes int64
	// ReadBuffer is the socket's receive buffer (SO_RCVBUF, default
	// DefaultLeanReadBuffer; the kernel caps it at net.core.rmem_max): a
	// burst waits there, not dropped, while the read loop catches up.
	ReadBuffer int
	// Drain bounds how long Stop answers what is queued (DefaultLeanDrain).
	Drain   time.Duration
	Logger  *slog.Logger
	Metrics *LeanMetrics // required
}

// LeanServer serves plain CoAP on one UDP socket with go-coap's codec
// (udp/coder, message) and none of its per-peer machinery: the read loop
// only classifies a datagram by its 4-byte header and queues it; a bounded
// pool of workers decodes, runs the uplink logic and answers. The Handler's
// Dedup is the one response cache (RFC 7252 §4.5), so the cost of a
// datagram does not grow with any peer's history (go-coap v3.8.0's UDP
// server walks each peer's 247 s cache on every datagram).
type LeanServer struct {
	h    *Handler
	conn *net.UDPConn
	cfg  LeanConfig
	m    *LeanMetrics

	queue    chan *datagram // datagrams within their source's share
	overflow chan *datagram // the rest: taken when queue is empty
	queued   atomic.Int64   // bytes charged to QueueBytes, both lanes
	over     atomic.Int64   // of which in overflow
	inflight inflightSet
	mid      atomic.Uint32 // message IDs of NON responses (§4.4)
	pool     sync.Pool
	send     func([]byte, netip.AddrPort) // tests: instead of the socket

	ctx      context.Context // handed to the uplink logic; ends after Drain
	cancel   context.CancelFunc
	stopping atomic.Bool
	started  atomic.Bool
	done     chan struct{} // closed when Serve returns
	workers  sync.WaitGroup
	stopOnce sync.Once
}

// datagram is one received datagram waiting for, or held by, a worker.
type datagram struct {
	buf  []byte // backing storage, reused
	data []byte
	from netip.AddrPort
	key  inflightKey
	size int64 // charged to QueueBytes while queued
	over bool  // queued in the overflow lane
	held bool  // key is in the in-flight set
}

// String is the peer's address, for debug logs.
func (d *datagram) String() string { return d.from.String() }

// NewLeanServer prepares to serve h on conn (plain CoAP, where the payload
// names the device). Serve starts it.
func NewLeanServer(h *Handler, conn *net.UDPConn, cfg LeanConfig) (*LeanServer, error) {
	if cfg.Metrics == nil {
		return nil, errors.New("ingest: LeanConfig.Metrics is required")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultLeanWorkers
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = DefaultLeanQueueLen
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = DefaultQueueBytes()
	}
	if cfg.SourceBytes <= 0 {
		cfg.SourceBytes = max(cfg.QueueBytes/sourceShare, datagramBuffer+datagramOverhead)
	}
	if cfg.Drain <= 0 {
		cfg.Drain = DefaultLeanDrain
	}
	if cfg.Logger == nil {
		cfg.Logger = h.Logger
	}
	if cfg.ReadBuffer <= 0 {
		cfg.ReadBuffer = DefaultLeanReadBuffer
	}
	if conn != nil {
		// Best effort: the kernel caps it at net.core.rmem_max. A burst the
		// buffer cannot hold is dropped by the kernel before the read loop
		// sees it, valid CONs included (that is what dropped the valid CON
		// after a junk burst on go-coap's server: 208 KiB by default).
		_ = conn.SetReadBuffer(cfg.ReadBuffer)
		if got, ok := receiveBuffer(conn); ok && got < cfg.ReadBuffer {
			cfg.Logger.Warn("coap: the socket receive buffer is smaller than asked: raise net.core.rmem_max, or bursts are dropped by the kernel",
				"got_bytes", got, "want_bytes", cfg.ReadBuffer)
		}
	}
	s := &LeanServer{h: h, conn: conn, cfg: cfg, m: cfg.Metrics,
		queue: make(chan *datagram, cfg.QueueLen), overflow: make(chan *datagram, cfg.QueueLen), done: make(chan struct{}),
		inflight: inflightSet{m: make(map[inflightKey]struct{}), bySource: make(map[netip.AddrPort]int64)}}
	s.m.queued.Store(&s.queued)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mid.Store(uint32(time.Now().UnixNano())) // §4.4: not predictable across restarts
	s.pool.New = func() any { return new(datagram) }
	return s, nil
}

// Addr is the bound address.
func (s *LeanServer) Addr() *net.UDPAddr { return s.conn.LocalAddr().(*net.UDPAddr) }

// ReceiveBuffer is the socket's receive buffer in bytes (0 if unknown).
func (s *LeanServer) ReceiveBuffer() int {
	n, _ := receiveBuffer(s.conn)
	return n
}

// Serve reads datagrams until Stop. It never waits for a worker: when the
// queue is full the datagram is dropped and counted.
func (s *LeanServer) Serve() error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("ingest: LeanServer.Serve called twice")
	}
	defer close(s.done)
	s.workers.Add(s.cfg.Workers)
	// An eighth of the workers take the overflow lane: a busy source's
	// backlog never holds more of them, so the rest are free for every
	// other device (on coap-server, where a worker waits for JetStream,
	// all 64 on the backlog put another device's p50 at 3.4-4.1 ms, eight
	// at 0.9-1.2 ms; scripts/coapbench -chatty-k 512).
	for i := range s.cfg.Workers {
		go s.work(i < max(1, s.cfg.Workers/8))
	}
	defer close(s.overflow)
	defer close(s.queue) // the read loop is the only sender
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if s.stopping.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("coap: read: %w", err)
		}
		s.receive(buf[:n], from)
	}
}

// receive classifies a datagram by its header and queues it. Only the
// header is read here, so junk costs the read loop next to nothing.
func (s *LeanServer) receive(b []byte, from netip.AddrPort) {
	// RFC 7252 §3: a message shorter than its 4-byte header cannot be
	// answered, and one with an unknown version MUST be silently ignored.
	if len(b) < 4 || b[0]>>6 != 1 {
		s.m.junk.Inc()
		return
	}
	typ := message.Type(b[0] >> 4 & 3)
	if typ == message.Acknowledgement || typ == message.Reset {
		// We never send a CON, so no ACK or RST is expected: rejecting one
		// is silently ignoring it (§4.2, §4.3).
		s.m.ignored.Inc()
		return
	}
	key := inflightKey{from: from, mid: uint16(b[2])<<8 | uint16(b[3])}
	// The token too, when the datagram holds it: a real copy repeats it,
	// so junk that happens to reuse a message ID does not hold back the
	// valid request behind it.
	if tkl := int(b[0] & 0xf); tkl <= 8 && len(b) >= 4+tkl {
		key.tkl = uint8(tkl)
		copy(key.token[:], b[4:4+tkl])
	}
	// What the datagram will hold: a pooled buffer, or one of its own when
	// larger (receive's buffers always have this capacity), and the rest.
	size := int64(max(len(b), datagramBuffer)) + datagramOverhead
	added, overShare := s.inflight.add(key, size, s.cfg.SourceBytes)
	if !added {
		// §4.5: a copy arriving while the first is being processed is not
		// processed again; the first copy's answer goes to the same
		// endpoint with the same message ID, and answers both.
		s.m.inflightDuplicate.Inc()
		return
	}
	if overShare && !reserve(&s.over, size, s.cfg.QueueBytes/2) {
		s.inflight.remove(key, size)
		s.m.sourceShare.Inc()
		return
	}
	if !reserve(&s.queued, size, s.cfg.QueueBytes) {
		if overShare {
			s.over.Add(-size)
		}
		s.inflight.remove(key, size)
		s.m.full.Inc()
		return
	}
	d := s.pool.Get().(*datagram)
	if cap(d.buf) < len(b) {
		d.buf = make([]byte, 0, max(len(b), datagramBuffer))
	}
	d.data = append(d.buf[:0], b...)
	d.buf = d.data
	d.from, d.key, d.size, d.over, d.held = from, key, size, overShare, true
	lane := s.queue
	if overShare {
		lane = s.overflow
	}
	select {
	case lane <- d:
	default:
		s.drop(d)
	}
}

// reserve adds size to n unless that takes it past bound: n never reads
// over its bound, even for an instant.
func reserve(n *atomic.Int64, size, bound int64) bool {
	for {
		cur := n.Load()
		if cur+size > bound {
			return false
		}
		if n.CompareAndSwap(cur, cur+size) {
			return true
		}
	}
}

// drop gives back what receive took for d, which is not queued: its bytes,
// its in-flight entry, the datagram; and counts it.
func (s *LeanServer) drop(d *datagram) {
	s.dequeued(d)
	s.leave(d)
	s.release(d)
	s.m.full.Inc()
}

// dequeued uncharges d from the queue's bytes.
func (s *LeanServer) dequeued(d *datagram) {
	s.queued.Add(-d.size)
	if d.over {
		s.over.Add(-d.size)
	}
}

// work answers queued datagrams until the queue proper (and, with
// overflow, the overflow lane) is closed and empty.
func (s *LeanServer) work(overflow bool) {
	defer s.workers.Done()
	ex := newExchange(s)
	for {
		var d *datagram
		var ok bool
		if overflow {
			d, ok = s.next()
		} else {
			d, ok = <-s.queue
		}
		if !ok {
			return
		}
		s.dequeued(d)
		ex.serve(d)
		s.leave(d)
		s.release(d)
	}
}

// next waits for a datagram: from the queue proper when it has one, from
// the overflow lane only when it has none. ok is false once both lanes
// are closed and empty.
func (s *LeanServer) next() (d *datagram, ok bool) {
	queue, overflow := s.queue, s.overflow
	for queue != nil || overflow != nil {
		select {
		case d, ok = <-queue:
			if ok {
				return d, true
			}
			queue = nil
			continue
		default:
		}
		select {
		case d, ok = <-queue:
			if !ok {
				queue = nil
				continue
			}
		case d, ok = <-overflow:
			if !ok {
				overflow = nil
				continue
			}
		}
		return d, true
	}
	return nil, false
}

// leave takes d's exchange out of the in-flight set.
func (s *LeanServer) leave(d *datagram) {
	if d.held {
		s.inflight.remove(d.key, d.size)
		d.held = false
	}
}

func (s *LeanServer) release(d *datagram) {
	if cap(d.buf) > datagramBuffer {
		d.buf = nil // a rare large buffer is not kept in the pool
	}
	d.data, d.held, d.size = nil, false, 0
	s.pool.Put(d)
}

func (s *LeanServer) write(b []byte, to netip.AddrPort) {
	if s.send != nil {
		s.send(b, to)
		return
	}
	if _, err := s.conn.WriteToUDPAddrPort(b, to); err != nil {
		s.m.writeErrors.Inc()
		s.cfg.Logger.Debug("coap: write", "remote", to.String(), "err", err)
	}
}

// Stop stops reading, lets the workers answer what is queued (within
// Drain), then closes the socket. It is idempotent.
func (s *LeanServer) Stop() {
	s.stopOnce.Do(func() {
		s.stopping.Store(true)
		if !s.started.Load() {
			s.cancel()
			_ = s.conn.Close()
			return
		}
		_ = s.conn.SetReadDeadline(time.Now()) // ends the read loop
		<-s.done
		drained := make(chan struct{})
		go func() { s.workers.Wait(); close(drained) }()
		select {
		case <-drained:
		case <-time.After(s.cfg.Drain):
			s.cancel() // stop waiting for the stream; the workers answer 5.03
			<-drained
		}
		s.cancel()
		_ = s.conn.Close()
	})
}

// inflightKey names a message exchange (§4.5: source endpoint and message
// ID), with its token.
type inflightKey struct {
	from  netip.AddrPort
	mid   uint16
	tkl   uint8
	token [8]byte
}

// inflightSet holds the exchanges queued or being processed, and what each
// source endpoint has of them in bytes. It is bounded by the queue and the
// workers: an entry lives from receive to answer.
type inflightSet struct {
	mu       sync.Mutex
	m        map[inflightKey]struct{}
	bySource map[netip.AddrPort]int64
}

// add takes k in flight, charging size to its source, unless k is in
// flight already (added false: a copy, §4.5). overShare is whether its
// source now holds more than share bytes.
func (s *inflightSet) add(k inflightKey, size, share int64) (added, overShare bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[k]; ok {
		return false, false
	}
	held := s.bySource[k.from] + size
	s.bySource[k.from] = held
	s.m[k] = struct{}{}
	return true, held > share
}

// remove takes k, charged size, out of flight.
func (s *inflightSet) remove(k inflightKey, size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, k)
	if held := s.bySource[k.from] - size; held > 0 {
		s.bySource[k.from] = held
	} else {
		delete(s.bySource, k.from)
	}
}

func (s *inflightSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
