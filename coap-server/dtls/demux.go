package dtls

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3/pkg/protocol"
	"github.com/pion/dtls/v3/pkg/protocol/extension"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
	"github.com/pion/transport/v5/deadline"
)

// demux owns the UDP socket and gives pion one net.PacketConn per peer,
// routed by Connection ID once one is set, else by address. It does what
// pion's own listener does (its internal/net/udp, MIT, from which the
// routing is adapted) plus the cookie exchange, statelessly (RFC 6347
// §4.2.1, cookie.go): a ClientHello from an address with no peer is
// answered here with a HelloVerifyRequest whose cookie is computed from
// the address and the hello, and nothing is kept. A forged source address
// never receives the cookie, so a spoofed ClientHello costs one HMAC and
// one small datagram, no memory. Only a ClientHello that echoes a valid
// cookie creates a peer: verified admits it to the handshake limits (or it
// is dropped, still without state), and pion runs the handshake from that
// second ClientHello on (InsecureSkipVerifyHello: pion never sends a
// HelloVerifyRequest itself). pion is patched to continue the client's
// numbering there, message_seq 1 and the next record sequence number
// (third_party/pion-dtls/PATCH.md): message_seq is in the Finished
// transcript, so it cannot be rewritten in flight.
type demux struct {
	pc       *net.UDPConn
	ready    chan struct{} // a peer was queued
	done     chan struct{}
	doneOnce sync.Once
	cfg      demuxConfig
	cookies  *cookieJar

	mu       sync.Mutex
	conns    map[string]*peerConn // by address string and by CID
	peers    int                  // distinct peers in conns
	queue    []*peerConn          // admitted peers for pion's Accept, oldest first
	admitted uint64               // numbers peers in the order they were admitted
}

type demuxConfig struct {
	cidLen int
	// verified admits a peer that echoed its cookie; false drops it.
	verified func(*peerConn) bool
	// release undoes an admission (peerConn.releaseSlot).
	release func(*peerConn)
	// helloVerify counts a HelloVerifyRequest sent, by the cookie the
	// ClientHello carried: "none", "invalid" (wrong or expired).
	helloVerify func(cookie string)
	// backlog counts an admitted peer dropped because pion's accept queue
	// was full.
	backlog func()
	// replaced counts an established association closed for a new
	// handshake from its address (RFC 6347 §4.2.8).
	replaced func()
	// dropped counts a datagram dropped because its peer's queue was full
	// (PeerQueueBytes).
	dropped func()
	// overBudget counts a peer closed for sending more than
	// HandshakeBytes before its handshake completed (nil: not counted).
	overBudget func()
	// discarded counts a datagram no peer takes, by outcome: no_session
	// (not a ClientHello, from an address or CID with no peer), read_error
	// (the socket read failed) (nil: not counted).
	discarded func(outcome string)
}

const (
	demuxMTU    = 8192
	peerQueue   = 64 // datagrams queued per peer before drops
	acceptQueue = 1024
)

// PeerQueueBytes bounds the bytes of a peer's datagrams waiting for pion
// to read them (they wait while its session's handler waits for the
// stream); past it they are dropped and counted. 8 KiB: dozens of uplinks
// or handshake records.
const PeerQueueBytes = 8 << 10

// HandshakeBytes bounds what a peer may send before its handshake
// completes, the cookie-echoing ClientHello included. A PSK handshake's
// flights from the client (the ClientHello again with the cookie, then
// ClientKeyExchange, ChangeCipherSpec and Finished) take well under 1 KiB,
// a few retransmissions of each too. Past it the peer is closed and its
// handshake ends, with everything pion held for it: pion keeps a copy of
// every record that carries part of an unfinished handshake message, and
// its own caps (2 MB of fragments, 8 MB of handshake cache) let a peer
// that holds no key make it keep megabytes for the handshake timeout.
const HandshakeBytes = 16 << 10

var errDemuxClosed = errors.New("dtls: listener closed")

func newDemux(laddr *net.UDPAddr, cfg demuxConfig) (*demux, error) {
	pc, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, err
	}
	d := &demux{
		pc: pc, cfg: cfg, cookies: newCookieJar(),
		ready: make(chan struct{}, 1),
		done:  make(chan struct{}),
		conns: make(map[string]*peerConn),
	}
	go d.readLoop()
	return d, nil
}

// Accept implements pion's dtlsnet.PacketListener. A peer closed while it
// waited in the queue is skipped.
func (d *demux) Accept() (net.PacketConn, net.Addr, error) {
	for {
		d.mu.Lock()
		var c *peerConn
		if len(d.queue) > 0 {
			c = d.queue[0]
			d.queue[0] = nil
			d.queue = d.queue[1:]
		}
		d.mu.Unlock()
		if c == nil {
			select {
			case <-d.ready:
				continue
			case <-d.done:
				return nil, nil, errDemuxClosed
			}
		}
		select {
		case <-c.closed:
			continue
		default:
		}
		return c, c.raddr, nil
	}
}

// Close implements dtlsnet.PacketListener: the socket closes, so every
// peer's reads and writes fail.
func (d *demux) Close() error {
	var err error
	d.doneOnce.Do(func() {
		close(d.done)
		err = d.pc.Close()
	})
	return err
}

// Addr implements dtlsnet.PacketListener.
func (d *demux) Addr() net.Addr { return d.pc.LocalAddr() }

// peer returns the conn whose address is raddr (the listener pairs pion's
// Conn with it this way).
func (d *demux) peer(raddr string) *peerConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns[raddr]
}

// peerCount is the number of peers the demux holds (admitted handshakes
// and sessions).
func (d *demux) peerCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.peers
}

func (d *demux) readLoop() {
	buf := make([]byte, demuxMTU)
	for {
		n, raddr, err := d.pc.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			d.discard("read_error")
			continue
		}
		d.dispatch(buf[:n], raddr)
	}
}

// dispatch routes one datagram to its peer. A ClientHello from an address
// with no peer is answered with a HelloVerifyRequest unless it echoes a
// valid cookie; then it is admitted as a new peer.
func (d *demux) dispatch(b []byte, raddr *net.UDPAddr) {
	d.mu.Lock()
	var c *peerConn
	if d.cfg.cidLen > 0 {
		if id, ok := routeCID(b, d.cfg.cidLen); ok {
			c = d.conns[id]
		}
	}
	if c == nil {
		c = d.conns[raddr.String()]
	}
	d.mu.Unlock()
	var h clientHello
	if c != nil {
		// A new ClientHello from the address of an established session
		// is a device that rebooted behind the same NAT binding (RFC 6347
		// §4.2.8): it gets a new association once it echoes a cookie; the
		// old one stays until then. Anything else is the session's.
		var ok bool
		if h, ok = parseClientHello(b); !ok || !c.established.Load() || c.startedBy(h) {
			c.deliver(b, raddr)
			return
		}
	} else {
		var ok bool
		if h, ok = parseClientHello(b); !ok {
			// Junk, or the records of a session this process does not
			// hold (closed, or before a restart): the device handshakes
			// again once its retransmissions go unanswered.
			d.discard("no_session")
			return
		}
	}
	if !d.cookies.valid(h, raddr) {
		reason := "none"
		if len(h.cookie) > 0 {
			reason = "invalid"
		}
		d.cfg.helloVerify(reason)
		_, _ = d.pc.WriteToUDP(helloVerifyRequest(h, d.cookies.cookie(h, raddr)), raddr)
		return
	}
	if c != nil {
		d.cfg.replaced()
		_ = c.Close() // the rebooted device's old association
	}
	if c = d.admit(raddr, h); c != nil {
		c.deliver(b, raddr)
	}
}

func (d *demux) discard(outcome string) {
	if d.cfg.discarded != nil {
		d.cfg.discarded(outcome)
	}
}

// admit creates the peer of an address that echoed its cookie, if the
// limits let it in and pion's accept queue has room; nil otherwise. Only
// the read loop creates peers, so raddr has none yet.
func (d *demux) admit(raddr *net.UDPAddr, h clientHello) *peerConn {
	c := &peerConn{
		d: d, raddr: raddr, in: make(chan datagram, peerQueue),
		closed: make(chan struct{}), readDeadline: deadline.New(), writeDeadline: deadline.New(),
	}
	copy(c.random[:], h.random())
	if !d.cfg.verified(c) {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.done:
		c.releaseSlot()
		return nil
	default:
	}
	if len(d.queue) >= acceptQueue {
		c.releaseSlot()
		d.cfg.backlog()
		return nil
	}
	d.admitted++
	c.order = d.admitted
	d.conns[raddr.String()] = c
	d.peers++
	d.queue = append(d.queue, c)
	select {
	case d.ready <- struct{}{}:
	default:
	}
	return c
}

// closeOldestHandshake closes the oldest peer from ip (limiter key, see
// ipOf) whose handshake is under way, and reports whether there was one.
// Its Close gives its limiter slot back. It scans every peer: it runs only
// when the handshake slots are all taken (Limiter.Heaviest).
func (d *demux) closeOldestHandshake(ip netip.Addr) bool {
	d.mu.Lock()
	var oldest *peerConn
	for _, c := range d.conns {
		if !c.established.Load() && c.acquired.Load() && ipOf(c.raddr) == ip && (oldest == nil || c.order < oldest.order) {
			oldest = c
		}
	}
	d.mu.Unlock()
	if oldest == nil {
		return false
	}
	_ = oldest.Close()
	return true
}

// removeLocked forgets c's routes; d.mu is held.
func (d *demux) removeLocked(c *peerConn) {
	d.peers--
	if d.conns[c.raddr.String()] == c {
		delete(d.conns, c.raddr.String())
	}
	if id, ok := c.cid.Load().(string); ok && d.conns[id] == c {
		delete(d.conns, id)
	}
}

type datagram struct {
	b    []byte
	from net.Addr
}

// peerConn is one peer's net.PacketConn for pion.
type peerConn struct {
	d      *demux
	raddr  *net.UDPAddr
	in     chan datagram
	queued atomic.Int64 // bytes in in (PeerQueueBytes)
	// sent is what the peer sent before its handshake completed
	// (HandshakeBytes).
	sent      atomic.Int64
	closed    chan struct{}
	closeOnce sync.Once

	order    uint64       // admission order (closeOldestHandshake)
	cid      atomic.Value // string: the Connection ID pion gave it
	movedOff atomic.Bool  // its first address route was dropped
	acquired atomic.Bool  // counted against the limiter (listener)
	// established is set once its handshake succeeded; random is the
	// ClientHello.random that started it (a copy of that hello is a
	// retransmission, not a new association).
	established atomic.Bool
	random      [32]byte

	readDeadline, writeDeadline *deadline.Deadline
}

// deliver queues a datagram for pion's reads; a full queue drops it, as a
// socket buffer would. A peer past HandshakeBytes before its handshake
// completed is closed instead.
func (c *peerConn) deliver(b []byte, from net.Addr) {
	if !c.established.Load() && c.sent.Add(int64(len(b))) > HandshakeBytes {
		if c.d.cfg.overBudget != nil {
			c.d.cfg.overBudget()
		}
		_ = c.Close()
		return
	}
	if c.queued.Add(int64(len(b))) > PeerQueueBytes {
		c.queued.Add(-int64(len(b)))
		c.d.cfg.dropped()
		return
	}
	cp := make([]byte, len(b))
	copy(cp, b)
	select {
	case c.in <- datagram{cp, from}:
	default:
		c.queued.Add(-int64(len(b)))
		c.d.cfg.dropped()
	}
}

// ReadFrom implements net.PacketConn.
func (c *peerConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case dg := <-c.in:
		c.queued.Add(-int64(len(dg.b)))
		return copy(p, dg.b), dg.from, nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	case <-c.readDeadline.Done():
		return 0, nil, context.DeadlineExceeded
	}
}

// WriteTo implements net.PacketConn. It watches pion's handshake going out
// for the ServerHello's Connection ID (a route that survives a new address).
func (c *peerConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if c.d.cfg.cidLen > 0 {
		if c.cid.Load() == nil {
			if id, ok := serverHelloCID(p); ok {
				c.d.mu.Lock()
				c.d.conns[id] = c
				c.d.mu.Unlock()
				c.cid.Store(id)
			}
		}
		// Writing to a new address with a CID set: the device moved; its
		// old address may now be another peer's (pion's listener does the same).
		if c.cid.Load() != nil && !c.movedOff.Load() && addr.String() != c.raddr.String() {
			c.d.mu.Lock()
			if c.d.conns[c.raddr.String()] == c {
				delete(c.d.conns, c.raddr.String())
			}
			c.d.mu.Unlock()
			c.movedOff.Store(true)
		}
	}
	select {
	case <-c.writeDeadline.Done():
		return 0, context.DeadlineExceeded
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	return c.d.pc.WriteTo(p, addr)
}

// startedBy reports whether h is the ClientHello that started c.
func (c *peerConn) startedBy(h clientHello) bool {
	return bytes.Equal(c.random[:], h.random())
}

// releaseSlot gives back the limiter slot verified took, once.
func (c *peerConn) releaseSlot() {
	if c.acquired.CompareAndSwap(true, false) {
		c.d.cfg.release(c)
	}
}

// Close implements net.PacketConn.
func (c *peerConn) Close() error {
	c.releaseSlot()
	c.closeOnce.Do(func() {
		c.d.mu.Lock()
		c.d.removeLocked(c)
		c.d.mu.Unlock()
		close(c.closed)
	})
	return nil
}

// LocalAddr implements net.PacketConn.
func (c *peerConn) LocalAddr() net.Addr { return c.d.pc.LocalAddr() }

// SetDeadline implements net.PacketConn.
func (c *peerConn) SetDeadline(t time.Time) error {
	c.readDeadline.Set(t)
	c.writeDeadline.Set(t)
	return nil
}

// SetReadDeadline implements net.PacketConn.
func (c *peerConn) SetReadDeadline(t time.Time) error { c.readDeadline.Set(t); return nil }

// SetWriteDeadline implements net.PacketConn.
func (c *peerConn) SetWriteDeadline(t time.Time) error { c.writeDeadline.Set(t); return nil }

// routeCID returns the Connection ID of a tls12_cid record in b (pion's
// cidDatagramRouter).
func routeCID(b []byte, size int) (string, bool) {
	pkts, err := recordlayer.ContentAwareUnpackDatagram(b, size)
	if err != nil {
		return "", false
	}
	for _, pkt := range pkts {
		h := &recordlayer.Header{ConnectionID: make([]byte, size)}
		if h.Unmarshal(pkt) != nil || h.ContentType != protocol.ContentTypeConnectionID {
			continue
		}
		return string(h.ConnectionID), true
	}
	return "", false
}

// serverHelloCID returns the Connection ID a ServerHello going out grants
// the peer (pion's cidConnIdentifier).
func serverHelloCID(b []byte) (string, bool) {
	pkts, err := recordlayer.UnpackDatagram(b)
	if err != nil || len(pkts) < 1 {
		return "", false
	}
	var h recordlayer.Header
	if h.Unmarshal(pkts[0]) != nil || h.ContentType != protocol.ContentTypeHandshake {
		return "", false
	}
	var (
		hh handshake.Header
		sh handshake.MessageServerHello
	)
	found := false
	for _, pkt := range pkts {
		if len(pkt) < recordlayer.FixedHeaderSize+handshake.HeaderLength || hh.Unmarshal(pkt[recordlayer.FixedHeaderSize:]) != nil {
			continue
		}
		if hh.Type != handshake.TypeServerHello {
			continue
		}
		if sh.Unmarshal(pkt[recordlayer.FixedHeaderSize+handshake.HeaderLength:]) == nil {
			found = true
			break
		}
	}
	if !found {
		return "", false
	}
	for _, ext := range sh.Extensions {
		if e, ok := ext.(*extension.ConnectionID); ok {
			return string(e.CID), true
		}
	}
	return "", false
}
