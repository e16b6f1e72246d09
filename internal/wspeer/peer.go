// Package wspeer runs one WebSocket connection that a server pushes frames
// to: coap-server's /ws subscribers and the relay's browsers. It keeps the
// one-writer/one-reader rule of gorilla/websocket: the write loop is the only
// goroutine that writes (with a deadline), the read loop the only one that
// reads (with a read limit and a pong handler). Senders never block: a frame
// that does not fit in the bounded queue means the peer is too slow, and it
// is disconnected rather than allowed to delay anyone else.
package wspeer

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Config tunes a peer. The zero value of a field takes the default.
type Config struct {
	// QueueSize bounds frames waiting to be written. Default 256: at the
	// busiest device's rate (a few per second) that is minutes of slack, and
	// at most 256 pointers to shared frames per connection.
	QueueSize int
	// WriteTimeout bounds one write. Default 10 s; after a write timeout the
	// connection is unusable, so it is closed.
	WriteTimeout time.Duration
	// PingInterval is how often a ping is sent. Default 30 s, under the
	// 60 s idle timeouts of common proxies (Fly's among them).
	PingInterval time.Duration
	// PongTimeout is how long to wait for any frame or pong. Default 2.5×PingInterval.
	PongTimeout time.Duration
	// ReadLimit bounds an incoming frame. Default 4 KiB: clients have nothing
	// to say but control frames.
	ReadLimit int64
	// QueueBytes bounds what the frames waiting to be written cost, as
	// their senders count it (the cost argument of Send, FrameCost for
	// the servers here); 0: no bound but QueueSize. A frame that does not
	// fit is refused as one that finds the queue full, unless the queue is
	// empty.
	QueueBytes int
	// Budget, when set, is a bound in bytes shared with other peers: the
	// frames waiting for any of them count against it until written.
	Budget *Budget
}

// FrameOverhead is what a queued or kept frame costs besides its payload:
// the prepared message (the encoded server frame, the payload it was made
// from, a map of frames) and a slot. Measured by the relay's
// BenchmarkRingMemory: 795 B per 387-byte entry.
const FrameOverhead = 400

// FrameCost is what a frame of n payload bytes costs held: the unit of
// QueueBytes and Budget for the servers here.
func FrameCost(n int) int { return n + FrameOverhead }

// Budget bounds in bytes the frames waiting in many peers' queues, so that
// their sum is a share of the process's memory whatever the number of
// peers. A frame shared by several peers counts once per peer: the bound
// is on the worst case, when each holds the last reference. Past it, a
// frame for a peer that has others waiting is refused (Send closes that
// peer with ErrBudget); one for an empty queue is taken, so peers that
// keep up are not cut for the slow ones. It is safe for concurrent use.
type Budget struct {
	limit int64
	used  atomic.Int64
}

// NewBudget returns a budget of limit bytes.
func NewBudget(limit int64) *Budget { return &Budget{limit: limit} }

// Used is the bytes charged now.
func (b *Budget) Used() int64 { return b.used.Load() }

// Limit is the budget's bound in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// take charges n, refused past the limit unless always.
func (b *Budget) take(n int64, always bool) bool {
	if b.used.Add(n) > b.limit && !always {
		b.used.Add(-n)
		return false
	}
	return true
}

func (c Config) withDefaults() Config {
	if c.QueueSize <= 0 {
		c.QueueSize = 256
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 30 * time.Second
	}
	if c.PongTimeout <= 0 {
		c.PongTimeout = c.PingInterval * 5 / 2
	}
	if c.ReadLimit <= 0 {
		c.ReadLimit = 4096
	}
	return c
}

// Close reasons, reported by Wait.
var (
	ErrSlow = errors.New("wspeer: send queue full, peer too slow")
	// ErrBudget: the frames waiting for every peer of a Budget reached it.
	ErrBudget   = errors.New("wspeer: queued frames over the shared memory budget")
	ErrClosed   = errors.New("wspeer: closed by server")
	ErrPeerGone = errors.New("wspeer: peer closed or stopped answering")
)

// CloseError is a close reason that carries its own close code and text
// (RFC 6455 §7.4; 4000–4999 are for applications), e.g. the relay's 4401
// when a user's token expires.
type CloseError struct {
	Code int
	Text string
}

func (e *CloseError) Error() string { return "wspeer: closed: " + e.Text }

// Peer is one connected client.
type Peer struct {
	mu   sync.Mutex // guards conn, set once by Run
	conn *websocket.Conn
	cfg  Config
	send chan queued
	// bytes is what the queued frames cost; room gets a token each time
	// the writer releases some (SendWait waits on it).
	bytes atomic.Int64
	room  chan struct{}
	// drained is set once the peer is closed: its queue is never written
	// then, and a sender that queues after it releases what it queued.
	drained atomic.Bool

	once   sync.Once
	done   chan struct{}
	reason error
}

// New returns a peer that queues frames at once; Run serves them on the
// upgraded connection. Subscribing the peer before the upgrade answers means
// a client receives every frame published after its handshake completes.
func New(cfg Config) *Peer {
	cfg = cfg.withDefaults()
	return &Peer{
		cfg:  cfg,
		send: make(chan queued, cfg.QueueSize),
		room: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
}

// queued is a frame waiting to be written and what its sender said it
// costs.
type queued struct {
	m    *websocket.PreparedMessage
	cost int64
}

// charge counts cost against the peer's QueueBytes and the Budget; nil
// when it fits, else why not. A frame for an empty queue always fits: a
// peer that keeps up is never cut, by its own bound or by what other
// peers hold (the Budget is then exceeded by at most that frame, until it
// is written).
func (p *Peer) charge(cost int64) error {
	n := p.bytes.Add(cost)
	empty := n == cost
	if !empty && p.cfg.QueueBytes > 0 && n > int64(p.cfg.QueueBytes) {
		p.refund(cost)
		return ErrSlow
	}
	if b := p.cfg.Budget; b != nil && !b.take(cost, empty) {
		p.refund(cost)
		return ErrBudget
	}
	return nil
}

// refund takes back a charge that was refused. While it stood, a SendWait
// may have found no room and begun to wait: it is told there is some.
func (p *Peer) refund(cost int64) {
	p.bytes.Add(-cost)
	p.signalRoom()
}

func (p *Peer) signalRoom() {
	select {
	case p.room <- struct{}{}:
	default:
	}
}

func (p *Peer) uncharge(cost int64) {
	p.bytes.Add(-cost)
	if b := p.cfg.Budget; b != nil {
		b.used.Add(-cost)
	}
}

// enqueue charges and queues a frame without blocking.
func (p *Peer) enqueue(m *websocket.PreparedMessage, cost int) error {
	select {
	case <-p.done:
		return ErrClosed
	default:
	}
	if err := p.charge(int64(cost)); err != nil {
		return err
	}
	select {
	case p.send <- queued{m, int64(cost)}:
		p.afterQueue()
		return nil
	default:
		p.uncharge(int64(cost))
		p.signalRoom()
		return ErrSlow
	}
}

// afterQueue releases a frame queued as the peer closed.
func (p *Peer) afterQueue() {
	if p.drained.Load() {
		p.drain()
	}
}

// drain empties the queue, releasing each frame's cost.
func (p *Peer) drain() {
	for {
		select {
		case q := <-p.send:
			p.uncharge(q.cost)
		default:
			return
		}
	}
}

// Send queues a frame costing cost bytes (as the caller counts them: the
// queue's and the Budget's unit) without blocking. It returns false when
// the peer is closed or the frame does not fit; in the latter case the
// peer is closed with ErrSlow (or ErrBudget), so one slow client costs the
// sender nothing more.
func (p *Peer) Send(m *websocket.PreparedMessage, cost int) bool {
	switch err := p.enqueue(m, cost); err {
	case nil:
		return true
	case ErrClosed:
		return false
	default:
		p.Close(err)
		return false
	}
}

// TrySend queues a frame the peer can go without (a report, not an
// entry) if it fits, and reports whether it did; otherwise it is dropped
// and the peer left open, so a flood of reports cannot disconnect it.
func (p *Peer) TrySend(m *websocket.PreparedMessage, cost int) bool {
	return p.enqueue(m, cost) == nil
}

// SendWait queues a frame, waiting for room in the queue (QueueSize and
// QueueBytes): history sent on connect is paced by the client instead of
// overflowing its queue. A Budget is charged but not waited for. It
// returns ErrClosed when the peer closes or ctx ends first.
func (p *Peer) SendWait(ctx context.Context, m *websocket.PreparedMessage, cost int) error {
	c := int64(cost)
	for {
		n := p.bytes.Add(c)
		if p.cfg.QueueBytes <= 0 || n <= int64(p.cfg.QueueBytes) || n == c {
			break
		}
		p.bytes.Add(-c)
		select {
		case <-p.room:
		case <-p.done:
			return ErrClosed
		case <-ctx.Done():
			return ErrClosed
		}
	}
	if b := p.cfg.Budget; b != nil {
		b.used.Add(c)
	}
	select {
	case p.send <- queued{m, c}:
		p.afterQueue()
		return nil
	case <-p.done:
	case <-ctx.Done():
	}
	p.uncharge(c)
	return ErrClosed
}

// Close ends the connection with reason; only the first reason is kept. It
// never blocks: a write stuck on a peer that stopped reading is cut short by
// moving its deadline to now. The frames still queued are dropped, and
// their cost released, at once (also for a peer that never ran).
func (p *Peer) Close(reason error) {
	p.once.Do(func() {
		p.reason = reason
		close(p.done)
		p.drained.Store(true)
		p.drain()
		p.mu.Lock()
		if p.conn != nil {
			_ = p.conn.UnderlyingConn().SetWriteDeadline(time.Now())
		}
		p.mu.Unlock()
	})
}

// Done is closed when the peer has been closed.
func (p *Peer) Done() <-chan struct{} { return p.done }

// Reason is why the peer closed; valid after Done is closed.
func (p *Peer) Reason() error {
	<-p.done
	return p.reason
}

// Run serves conn until it closes and returns the reason. It runs the write
// loop itself and the read loop in a goroutine it waits for.
func (p *Peer) Run(conn *websocket.Conn) error {
	p.mu.Lock()
	p.conn = conn
	p.mu.Unlock()
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		p.readLoop()
	}()
	p.writeLoop()
	// Closing the socket unblocks the reader.
	_ = p.conn.Close()
	<-readDone
	return p.reason
}

func (p *Peer) readLoop() {
	p.conn.SetReadLimit(p.cfg.ReadLimit)
	_ = p.conn.SetReadDeadline(time.Now().Add(p.cfg.PongTimeout))
	p.conn.SetPongHandler(func(string) error {
		return p.conn.SetReadDeadline(time.Now().Add(p.cfg.PongTimeout))
	})
	for {
		if _, _, err := p.conn.NextReader(); err != nil {
			p.Close(ErrPeerGone)
			return
		}
		_ = p.conn.SetReadDeadline(time.Now().Add(p.cfg.PongTimeout))
	}
}

func (p *Peer) writeLoop() {
	ping := time.NewTicker(p.cfg.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-p.done:
			p.writeClose()
			return
		case q := <-p.send:
			_ = p.conn.SetWriteDeadline(time.Now().Add(p.cfg.WriteTimeout))
			err := p.conn.WritePreparedMessage(q.m)
			p.uncharge(q.cost)
			p.signalRoom()
			if err != nil {
				p.Close(ErrPeerGone)
				return
			}
		case <-ping.C:
			if err := p.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(p.cfg.WriteTimeout)); err != nil {
				p.Close(ErrPeerGone)
				return
			}
		}
	}
}

// writeClose sends a close frame saying why, best effort: 1001 (going away,
// RFC 6455 §7.4.1) on shutdown, or a CloseError's own code.
func (p *Peer) writeClose() {
	code, text := websocket.CloseGoingAway, "server closing"
	var ce *CloseError
	if errors.As(p.reason, &ce) {
		code, text = ce.Code, ce.Text
	}
	if p.reason == ErrPeerGone || p.reason == ErrSlow || p.reason == ErrBudget {
		// Gone: nobody to tell. Slow: its socket is full, a close frame
		// would only wait behind the frames it did not read.
		return
	}
	_ = p.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
}
