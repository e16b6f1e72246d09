package dtls

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
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
// routing is adapted) plus one thing: a peer is "pre-cookie" until it
// echoes the cookie of pion's HelloVerifyRequest (RFC 6347 §4.2.1), which
// a spoofed source address never receives. Pre-cookie peers are not
// counted against any handshake limit; they live in a table of their own,
// bounded (a new one evicts a random one when full) and short-lived
// (PreCookieTimeout). Only a peer that returned the cookie reaches
// verified, which admits it to the limits (or closes it).
//
// Why pion still sends the HelloVerifyRequest, and not a stateless one in
// front of it: pion's server reassembles handshake messages strictly from
// message_seq 0 (fragment_buffer.go), numbers its own from 0, draws its
// cookie from crypto/rand with no hook, and message_seq is part of the
// Finished transcript, so a ClientHello answered in front (message_seq 1
// with our cookie) cannot be handed to an unmodified pion.
type demux struct {
	pc       *net.UDPConn
	ready    chan struct{} // a peer was queued
	done     chan struct{}
	doneOnce sync.Once
	cfg      demuxConfig

	mu      sync.Mutex
	conns   map[string]*peerConn // by address string and by CID
	pending []*peerConn          // pre-cookie peers, for random eviction
	queue   []*peerConn          // new peers for pion's Accept, newest last
}

type demuxConfig struct {
	maxPending int           // pre-cookie table size
	timeout    time.Duration // pre-cookie lifetime
	cidLen     int
	// verified admits a peer that echoed its cookie; false closes it.
	verified func(*peerConn) bool
	// release undoes an admission (peerConn.releaseSlot).
	release func(*peerConn)
	// evicted counts a pre-cookie peer dropped: "evicted" (table full),
	// "expired" (no cookie in time), "backlog" (oldest in a full accept queue).
	evicted func(reason string)
	// pendingGauge tracks len(pending).
	pendingGauge func(n int)
}

const (
	demuxMTU     = 8192
	peerQueue    = 64 // datagrams queued per peer before drops
	acceptQueue  = 1024
	maxCookieLen = 255
)

var errDemuxClosed = errors.New("dtls: listener closed")

func newDemux(laddr *net.UDPAddr, cfg demuxConfig) (*demux, error) {
	pc, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, err
	}
	d := &demux{
		pc: pc, cfg: cfg,
		ready: make(chan struct{}, 1),
		done:  make(chan struct{}),
		conns: make(map[string]*peerConn),
	}
	go d.readLoop()
	return d, nil
}

// Accept implements pion's dtlsnet.PacketListener.
// A peer evicted while it waited in the queue is skipped here, before pion
// spends anything on it.
//
// Newest first: under a flood the queue is always full, and a real device
// served last-in-first-out gets its HelloVerifyRequest at once instead of
// after every spoofed hello ahead of it (those are the ones left to age
// out); the oldest waiting is dropped when the queue is full.
func (d *demux) Accept() (net.PacketConn, net.Addr, error) {
	for {
		d.mu.Lock()
		var c *peerConn
		if n := len(d.queue); n > 0 {
			c = d.queue[n-1]
			d.queue[n-1] = nil
			d.queue = d.queue[:n-1]
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

func (d *demux) pendingLen() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pending)
}

func (d *demux) readLoop() {
	buf := make([]byte, demuxMTU)
	for {
		n, raddr, err := d.pc.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		d.dispatch(buf[:n], raddr)
	}
}

// dispatch routes one datagram, creating a pre-cookie peer for a
// ClientHello from a new address.
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
	if c == nil {
		select {
		case <-d.done:
			d.mu.Unlock()
			return
		default:
		}
		if _, ok := clientHelloCookie(b); !ok {
			d.mu.Unlock()
			return
		}
		c = d.newPeer(raddr)
		if len(d.queue) >= acceptQueue {
			oldest := d.queue[0]
			copy(d.queue, d.queue[1:])
			d.queue = d.queue[:len(d.queue)-1]
			d.removeLocked(oldest)
			oldest.closeAsync()
			d.cfg.evicted("backlog")
		}
		d.queue = append(d.queue, c)
		select {
		case d.ready <- struct{}{}:
		default:
		}
	}
	d.mu.Unlock()

	if c.state.Load() == peerPending {
		if cookie, ok := clientHelloCookie(b); ok && len(cookie) > 0 && c.cookieMatches(cookie) {
			d.promote(c)
			if !d.cfg.verified(c) {
				_ = c.Close()
				return
			}
		}
	}
	c.deliver(b, raddr)
}

// newPeer adds a pre-cookie peer, evicting a random one when the table is
// full; d.mu is held.
func (d *demux) newPeer(raddr *net.UDPAddr) *peerConn {
	if len(d.pending) >= d.cfg.maxPending {
		victim := d.pending[rand.IntN(len(d.pending))]
		d.removeLocked(victim)
		victim.closeAsync()
		d.cfg.evicted("evicted")
	}
	c := &peerConn{
		d: d, raddr: raddr, in: make(chan datagram, peerQueue),
		closed: make(chan struct{}), readDeadline: deadline.New(), writeDeadline: deadline.New(),
		pendingIdx: len(d.pending),
	}
	d.conns[raddr.String()] = c
	d.pending = append(d.pending, c)
	d.cfg.pendingGauge(len(d.pending))
	c.timer = time.AfterFunc(d.cfg.timeout, func() {
		if c.state.Load() == peerPending {
			d.cfg.evicted("expired")
			_ = c.Close()
		}
	})
	return c
}

// promote moves c out of the pre-cookie table.
func (d *demux) promote(c *peerConn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c.state.CompareAndSwap(peerPending, peerVerified) {
		d.dropPendingLocked(c)
		c.timer.Stop()
	}
}

func (d *demux) dropPendingLocked(c *peerConn) {
	i := c.pendingIdx
	if i < 0 || i >= len(d.pending) || d.pending[i] != c {
		return
	}
	last := len(d.pending) - 1
	d.pending[i] = d.pending[last]
	d.pending[i].pendingIdx = i
	d.pending[last] = nil
	d.pending = d.pending[:last]
	c.pendingIdx = -1
	d.cfg.pendingGauge(len(d.pending))
}

// removeLocked forgets c's routes and table slot; d.mu is held.
func (d *demux) removeLocked(c *peerConn) {
	d.dropPendingLocked(c)
	if d.conns[c.raddr.String()] == c {
		delete(d.conns, c.raddr.String())
	}
	if id, ok := c.cid.Load().(string); ok && d.conns[id] == c {
		delete(d.conns, id)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
}

const (
	peerPending int32 = iota
	peerVerified
)

type datagram struct {
	b    []byte
	from net.Addr
}

// peerConn is one peer's net.PacketConn for pion.
type peerConn struct {
	d          *demux
	raddr      *net.UDPAddr
	in         chan datagram
	closed     chan struct{}
	closeOnce  sync.Once
	timer      *time.Timer
	pendingIdx int // in d.pending, -1 once out (d.mu)

	state    atomic.Int32
	cookie   atomic.Pointer[[]byte] // of pion's HelloVerifyRequest
	cid      atomic.Value           // string: the Connection ID pion gave it
	movedOff atomic.Bool            // its first address route was dropped
	acquired atomic.Bool            // counted against the limiter (listener)

	readDeadline, writeDeadline *deadline.Deadline
}

func (c *peerConn) cookieMatches(got []byte) bool {
	want := c.cookie.Load()
	return want != nil && bytes.Equal(*want, got)
}

// deliver queues a datagram for pion's reads; a full queue drops it, as a
// socket buffer would.
func (c *peerConn) deliver(b []byte, from net.Addr) {
	cp := make([]byte, len(b))
	copy(cp, b)
	select {
	case c.in <- datagram{cp, from}:
	default:
	}
}

// ReadFrom implements net.PacketConn.
func (c *peerConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case dg := <-c.in:
		return copy(p, dg.b), dg.from, nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	case <-c.readDeadline.Done():
		return 0, nil, context.DeadlineExceeded
	}
}

// WriteTo implements net.PacketConn. It watches pion's handshake going out:
// the HelloVerifyRequest's cookie (what the peer must echo) and the
// ServerHello's Connection ID (a route that survives a new address).
func (c *peerConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if c.state.Load() == peerPending && c.cookie.Load() == nil {
		if cookie, ok := helloVerifyCookie(p); ok {
			cp := bytes.Clone(cookie)
			c.cookie.Store(&cp)
		}
	}
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

// closeAsync closes c while d.mu is held (its routes are already gone).
func (c *peerConn) closeAsync() {
	c.closeOnce.Do(func() { close(c.closed) })
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

// firstHandshake returns the first record of a datagram and its handshake
// header when it is an epoch-0 handshake record whose first fragment starts
// at offset 0, with the fragment's body.
func firstHandshake(b []byte) (handshake.Header, []byte, bool) {
	var rh recordlayer.Header
	if len(b) < recordlayer.FixedHeaderSize+handshake.HeaderLength || rh.Unmarshal(b) != nil ||
		rh.ContentType != protocol.ContentTypeHandshake || rh.Epoch != 0 {
		return handshake.Header{}, nil, false
	}
	// Unmarshal leaves ContentLen unset: the length is bytes 11-12.
	end := recordlayer.FixedHeaderSize + int(binary.BigEndian.Uint16(b[11:13]))
	if end > len(b) {
		return handshake.Header{}, nil, false
	}
	rec := b[recordlayer.FixedHeaderSize:end]
	var hh handshake.Header
	if hh.Unmarshal(rec) != nil || hh.FragmentOffset != 0 {
		return handshake.Header{}, nil, false
	}
	body := rec[handshake.HeaderLength:]
	if int(hh.FragmentLength) < len(body) {
		body = body[:hh.FragmentLength]
	}
	return hh, body, true
}

// clientHelloCookie reports whether b starts with a ClientHello and
// returns its cookie (empty before a HelloVerifyRequest). The cookie follows
// version (2), random (32) and session_id (1+n) (RFC 6347 §4.2.1).
func clientHelloCookie(b []byte) ([]byte, bool) {
	hh, body, ok := firstHandshake(b)
	if !ok || hh.Type != handshake.TypeClientHello || len(body) < 2+32+1 {
		return nil, false
	}
	i := 2 + 32
	i += 1 + int(body[i])
	if i >= len(body) {
		return nil, true // the cookie is in a later fragment: treated as none
	}
	n := int(body[i])
	if i+1+n > len(body) {
		return nil, true
	}
	return body[i+1 : i+1+n], true
}

// helloVerifyCookie returns the cookie of a HelloVerifyRequest: version
// (2), then cookie (1+n).
func helloVerifyCookie(b []byte) ([]byte, bool) {
	hh, body, ok := firstHandshake(b)
	if !ok || hh.Type != handshake.TypeHelloVerifyRequest || len(body) < 3 {
		return nil, false
	}
	n := int(body[2])
	if n == 0 || n > maxCookieLen || 3+n > len(body) {
		return nil, false
	}
	return body[3 : 3+n], true
}

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
