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
	// the struct (144 B), its slot in the queue (8 B) and its entry in the
	// in-flight set (~100 B with the table's spare room), charged to
	// QueueBytes with the buffer's capacity; TestQueueBytesMatchTheHeap
	// checks it against the heap.
	datagramOverhead = 256
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

	queue    chan *datagram
	queued   atomic.Int64 // bytes charged to QueueBytes
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
		queue: make(chan *datagram, cfg.QueueLen), done: make(chan struct{}),
		inflight: inflightSet{m: make(map[inflightKey]struct{})}}
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
	for range s.cfg.Workers {
		go s.work()
	}
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
	// §4.5: a copy arriving while the first is being processed is not
	// processed again; the first copy's answer goes to the same endpoint
	// with the same message ID, and answers both.
	if !s.inflight.add(key) {
		s.m.inflightDuplicate.Inc()
		return
	}
	d := s.pool.Get().(*datagram)
	if cap(d.buf) < len(b) {
		d.buf = make([]byte, 0, max(len(b), datagramBuffer))
	}
	d.data = append(d.buf[:0], b...)
	d.buf = d.data
	d.from, d.key, d.held = from, key, true
	// Charged what it holds: its buffer's capacity, not its length (a
	// 20-byte datagram in a 512-byte buffer holds 512 bytes).
	d.size = int64(cap(d.buf)) + datagramOverhead
	if s.queued.Add(d.size) > s.cfg.QueueBytes {
		s.drop(d)
		return
	}
	select {
	case s.queue <- d:
		s.m.queuedBytes.Set(float64(s.queued.Load()))
	default:
		s.drop(d)
	}
}

// drop gives back what receive took for d, which is not queued: its bytes,
// its in-flight entry, the datagram; and counts it.
func (s *LeanServer) drop(d *datagram) {
	s.queued.Add(-d.size)
	s.leave(d)
	s.release(d)
	s.m.full.Inc()
}

// work answers queued datagrams until the queue is closed.
func (s *LeanServer) work() {
	defer s.workers.Done()
	ex := newExchange(s)
	for d := range s.queue {
		s.queued.Add(-d.size)
		ex.serve(d)
		s.leave(d)
		s.release(d)
	}
}

// leave takes d's exchange out of the in-flight set.
func (s *LeanServer) leave(d *datagram) {
	if d.held {
		s.inflight.remove(d.key)
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

// inflightSet holds the exchanges queued or being processed. It is bounded
// by the queue and the workers: an entry lives from receive to answer.
type inflightSet struct {
	mu sync.Mutex
	m  map[inflightKey]struct{}
}

func (s *inflightSet) add(k inflightKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[k]; ok {
		return false
	}
	s.m[k] = struct{}{}
	return true
}

func (s *inflightSet) remove(k inflightKey) {
	s.mu.Lock()
	delete(s.m, k)
	s.mu.Unlock()
}

func (s *inflightSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
