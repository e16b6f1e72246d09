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
	ErrSlow     = errors.New("wspeer: send queue full, peer too slow")
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
	send chan *websocket.PreparedMessage

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
		send: make(chan *websocket.PreparedMessage, cfg.QueueSize),
		done: make(chan struct{}),
	}
}

// Send queues a frame without blocking. It returns false when the peer is
// closed or its queue is full; in the latter case the peer is closed with
// ErrSlow, so one slow client costs the sender nothing more.
func (p *Peer) Send(m *websocket.PreparedMessage) bool {
	select {
	case <-p.done:
		return false
	default:
	}
	select {
	case p.send <- m:
		return true
	default:
		p.Close(ErrSlow)
		return false
	}
}

// TrySend queues a frame the peer can go without (a report, not an
// entry) if there is room, and reports whether it did; a full queue drops
// it and leaves the peer open, so a flood of reports cannot disconnect it.
func (p *Peer) TrySend(m *websocket.PreparedMessage) bool {
	select {
	case <-p.done:
		return false
	case p.send <- m:
		return true
	default:
		return false
	}
}

// SendWait queues a frame, waiting for room in the queue: history sent on
// connect is paced by the client instead of overflowing its queue. It
// returns ErrClosed when the peer closes or ctx ends first.
func (p *Peer) SendWait(ctx context.Context, m *websocket.PreparedMessage) error {
	select {
	case p.send <- m:
		return nil
	case <-p.done:
		return ErrClosed
	case <-ctx.Done():
		return ErrClosed
	}
}

// Close ends the connection with reason; only the first reason is kept. It
// never blocks: a write stuck on a peer that stopped reading is cut short by
// moving its deadline to now.
func (p *Peer) Close(reason error) {
	p.once.Do(func() {
		p.reason = reason
		close(p.done)
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
		case m := <-p.send:
			_ = p.conn.SetWriteDeadline(time.Now().Add(p.cfg.WriteTimeout))
			if err := p.conn.WritePreparedMessage(m); err != nil {
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
	if p.reason == ErrPeerGone || p.reason == ErrSlow {
		// Gone: nobody to tell. Slow: its socket is full, a close frame
		// would only wait behind the frames it did not read.
		return
	}
	_ = p.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
}
