package upstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Link states. Watchers are told about transitions between announced
// states only: connecting→up says nothing (nothing was interrupted);
// connecting→down and up→down send "lost"; down→up sends "restored".
// Failed retries while down send nothing, so a flapping upstream costs
// each watcher at most one pair per backoff interval.
type state int

const (
	stateConnecting state = iota
	stateUp
	stateDown
)

// Status data values (data.upstream of a status entry).
const (
	StatusLost     = "lost"
	StatusRestored = "restored"
)

// link is the upstream connection of one device. A shared link (in the
// manager's map) serves every watcher of the device and keeps a ring of
// its recent frames; a dedicated one serves the single watcher whose
// since or tail the shared link's ring could not answer.
type link struct {
	m      *Manager
	device string
	ctx    context.Context
	cancel context.CancelFunc
	// dedicated is set while the link is in the manager's dedicated set
	// (changed under the manager's lock; read without it by the link).
	dedicated atomic.Bool

	firstAttempt chan struct{} // closed after the first dial, either way
	firstOnce    sync.Once

	mu sync.Mutex
	// first is where the link's first watcher started; the link dials
	// with it until it has forwarded an entry.
	first    Resume
	watchers map[*Watch]struct{}
	state    state
	attempts int    // dials made
	last     uint64 // seq of the last entry forwarded (valid when seen)
	seen     bool
	ring     ring
	// burst bounds the history the current connection may still send:
	// what its since/tail can bring, less the frames it already sent, until
	// burstUntil (HistoryBurst after it connected; zero before).
	burst      int
	burstUntil time.Time
	// connEntries counts the entries the current connection forwarded: a
	// recovered:false after one is a gap within history, not a reset.
	connEntries int
}

func newLink(m *Manager, device string, first Resume) *link {
	ctx, cancel := context.WithCancel(m.ctx)
	l := &link{
		m: m, device: device, ctx: ctx, cancel: cancel,
		firstAttempt: make(chan struct{}),
		first:        first,
		watchers:     make(map[*Watch]struct{}),
		// A dedicated link keeps a ring too: it may become the shared one.
		ring:  newRing(m.cfg.History, m.cfg.HistoryBytes),
		burst: first.backlog(),
	}
	if first.Mode == Since {
		// Opened since=N: it will be sent every entry after N.
		l.ring.floor, l.ring.floorOK = first.N, true
	}
	return l
}

// resume is where the next dial starts (next), counted as a dial.
func (l *link) resume() Resume {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.nextLocked()
	l.attempts++
	l.burst, l.burstUntil = r.backlog(), time.Time{}
	l.connEntries = 0
	if r.Mode == Tail && l.ring.n == 0 && !l.seen {
		// Everything this connection sends from now on lands in the ring.
		l.ring.whole, l.ring.depth = true, r.N
	}
	return r
}

// nextLocked is where the next dial starts: after the last entry
// forwarded, else where the first watcher asked. A live or tail link that
// redials before any dial told it a position (its first failed, or
// coap-server predates position=1) asks for OutageTail more entries than
// its tail, so that entries published while it was away are not lost:
// its watchers may get up to that many older entries than they asked
// for, never fewer. A since link asks again for its since.
func (l *link) nextLocked() Resume {
	switch {
	case l.seen:
		return Resume{Mode: Since, N: l.last}
	case l.first.Mode != Since && l.attempts > 0:
		return Resume{Mode: Tail, N: min(l.first.N+uint64(l.m.cfg.OutageTail), MaxTail)}
	default:
		return l.first
	}
}

// serve answers a new watcher's start from the ring, under the link's
// lock: it returns the frames to send first and true, or false when the
// ring cannot answer (a dedicated link must).
//
// A tail is not answered while the link's connection may still be sending
// its own history (pending): the rest of it would reach the new watcher
// after its tail, older entries than the ones the watcher joined for. A
// since is: whatever follows is still after it, in order. While the link
// is down a tail is answered too: what its redial brings was published
// after what the ring holds, and the watcher would not see it otherwise
// (a dedicated link for each start during an outage would only redial the
// same upstream many times over).
func (l *link) serve(r Resume) ([]frame, bool) {
	switch r.Mode {
	case Since:
		return l.ring.since(r.N, l.top())
	case Tail:
		if l.state != stateDown && l.pending() > 0 {
			return nil, false
		}
		return l.ring.tail(r.N)
	default:
		return nil, true
	}
}

// pending bounds the frames a watcher attached now may receive in a burst
// besides its own backlog: the rest of the current connection's history.
// coap-server sends it as fast as the link reads, before the watcher's
// socket may even write, so the watcher's queue must hold it too.
// coap-server sends it at once, so after HistoryBurst the connection is
// taken to be live (a start then needs room for its own answer only).
// While the link is down it is what the redial may bring.
func (l *link) pending() int {
	if l.state == stateDown {
		return max(l.burst, l.nextLocked().backlog())
	}
	if !l.burstUntil.IsZero() && l.m.cfg.Now().After(l.burstUntil) {
		return 0
	}
	return l.burst
}

// top is the newest position the link knows: the last seq forwarded.
func (l *link) top() uint64 {
	if l.seen {
		return l.last
	}
	return 0
}

// attach registers w after sending it backlog, atomically with respect to
// forward: w gets backlog, then exactly the frames forwarded after it.
// The caller holds l.mu.
func (l *link) attachLocked(w *Watch, backlog []frame) {
	for _, f := range backlog {
		if !w.sender.Send(f.pm, f.cost) {
			l.m.cfg.Metrics.Dropped.WithLabelValues(DropSlowClient).Inc()
			break
		}
	}
	l.m.cfg.Metrics.Deliveries.Add(float64(len(backlog)))
	l.addLocked(w)
}

// add registers w; a watcher joining while the link is down is told at once.
func (l *link) add(w *Watch) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addLocked(w)
}

func (l *link) addLocked(w *Watch) {
	l.watchers[w] = struct{}{}
	if l.state == stateDown {
		if f, ok := l.status(StatusLost); ok {
			l.m.cfg.Metrics.Statuses.WithLabelValues(StatusLost).Inc()
			w.sender.Send(f.pm, f.cost)
		}
	}
}

// remove unregisters w and returns how many watchers are left.
func (l *link) remove(w *Watch) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.watchers, w)
	return len(l.watchers)
}

// setState records a transition and tells the watchers when it is one
// they must hear about.
func (l *link) setState(s state) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := l.state
	l.state = s
	var what string
	switch {
	case s == stateDown && prev != stateDown:
		what = StatusLost
	case s == stateUp && prev == stateDown:
		what = StatusRestored
	default:
		return
	}
	f, ok := l.status(what)
	if !ok {
		return
	}
	for w := range l.watchers {
		l.m.cfg.Metrics.Statuses.WithLabelValues(what).Inc()
		if !w.sender.Send(f.pm, f.cost) {
			l.m.cfg.Metrics.Dropped.WithLabelValues(DropSlowClient).Inc()
		}
	}
}

// status encodes a status entry once for every watcher.
func (l *link) status(what string) (frame, bool) {
	msg := "Live stream restored"
	if what == StatusLost {
		msg = "Live stream interrupted: reconnecting to coap-server"
	}
	b, err := livelog.Status(l.device, l.m.cfg.Now(), msg, map[string]string{"upstream": what}).Marshal()
	if err != nil {
		return frame{}, false
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
	if err != nil {
		return frame{}, false
	}
	return newFrame(pm, len(b)), true
}

// run connects, reads and reconnects until the link is cancelled.
func (l *link) run() {
	defer l.m.wg.Done()
	defer l.release()
	defer l.firstOnce.Do(func() { close(l.firstAttempt) })
	cfg := &l.m.cfg
	log := cfg.Logger.With("device", l.device)
	b := cfg.NewBackOff()
	b.Reset()
	connectedBefore := false
	for {
		conn, from, err := l.dial()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			cfg.Metrics.DialFailures.Inc()
			l.setState(stateDown)
			l.firstOnce.Do(func() { close(l.firstAttempt) })
			log.Warn("upstream dial failed", "err", err)
		} else {
			started := cfg.Now()
			l.mu.Lock()
			l.burstUntil = started.Add(cfg.HistoryBurst)
			l.mu.Unlock()
			l.setState(stateUp)
			l.firstOnce.Do(func() { close(l.firstAttempt) })
			cfg.Metrics.Connected.Inc()
			if connectedBefore {
				cfg.Metrics.Reconnects.Inc()
				log.Info("upstream restored", "from", from.String())
			}
			connectedBefore = true
			err = l.read(conn)
			cfg.Metrics.Connected.Dec()
			if l.ctx.Err() != nil {
				return
			}
			if cfg.Now().Sub(started) >= cfg.StableAfter {
				b.Reset()
			}
			l.setState(stateDown)
			log.Warn("upstream lost", "err", err)
		}
		d := b.NextBackOff()
		if d == backoff.Stop {
			// A policy that gives up is not honoured: the link must never
			// stop reconnecting while browsers watch (backoff's MaxElapsedTime).
			d = 30 * time.Second
		}
		t := time.NewTimer(d)
		select {
		case <-l.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// dial connects with the position from resume, which it returns.
func (l *link) dial() (*websocket.Conn, Resume, error) {
	from := l.resume()
	u, err := l.m.upstreamURL(l.device, from)
	if err != nil {
		return nil, from, fmt.Errorf("UPSTREAM_URL: %w", err)
	}
	conn, resp, err := l.m.cfg.Dialer.DialContext(l.ctx, u, l.m.header())
	if err != nil {
		if resp != nil {
			_ = resp.Body.Close()
			// Never the URL or headers: only the status says what went wrong.
			return nil, from, fmt.Errorf("upstream answered %d: %w", resp.StatusCode, err)
		}
		return nil, from, err
	}
	return conn, from, nil
}

var errIdle = errors.New("upstream idle: no frame or ping")

// read forwards frames until the connection fails or the link is cancelled.
func (l *link) read(conn *websocket.Conn) error {
	cfg := &l.m.cfg
	// Cancelling the link closes the socket, which ends ReadMessage; a
	// going-away close frame is sent first, best effort.
	stop := context.AfterFunc(l.ctx, func() {
		_ = conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseGoingAway, ""), time.Now().Add(time.Second))
		_ = conn.Close()
	})
	defer func() {
		if stop() {
			_ = conn.Close()
		}
	}()
	conn.SetReadLimit(cfg.ReadLimit)
	_ = conn.SetReadDeadline(time.Now().Add(cfg.IdleTimeout))
	conn.SetPingHandler(func(data string) error {
		_ = conn.SetReadDeadline(time.Now().Add(cfg.IdleTimeout))
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(10*time.Second))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	for {
		typ, b, err := conn.ReadMessage()
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				return errIdle
			}
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(cfg.IdleTimeout))
		l.forward(typ, b)
		if l.dedicated.Load() {
			l.m.merge(l)
		}
	}
}

// forward checks one upstream frame and queues it, encoded once, for
// every watcher. Defence in depth: coap-server only sends the device asked
// for, but a frame for another device must never reach these browsers.
// An entry whose seq is not above the last one forwarded was forwarded
// already (a resumed connection overlapping the previous one) and is
// dropped; a frame without seq moves no position. coap-server's
// recovered:false status (the relay's position is no longer retained, or
// the stream was reset) is forwarded and resets the link's position and
// ring: what follows is the new truth. After an entry on the same
// connection it marks a gap within the history instead: it empties the
// ring only.
func (l *link) forward(typ int, b []byte) {
	cfg := &l.m.cfg
	if typ != websocket.TextMessage {
		cfg.Metrics.Dropped.WithLabelValues(DropBinary).Inc()
		return
	}
	h, err := peek(b)
	if err != nil {
		cfg.Metrics.Dropped.WithLabelValues(DropUndecodable).Inc()
		return
	}
	if h.device != l.device {
		cfg.Metrics.Dropped.WithLabelValues(DropForeignDevice).Inc()
		return
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
	if err != nil {
		cfg.Metrics.Dropped.WithLabelValues(DropUndecodable).Inc()
		return
	}
	f := newFrame(pm, len(b))
	l.mu.Lock()
	defer l.mu.Unlock()
	l.burst = max(l.burst-1, 0)
	if h.hasPosition && !h.reset {
		// The connection's history is all here, and the link has every
		// entry up to the position: a redial resumes after it, and the
		// ring covers up to it (kept to itself: no watcher asked).
		l.burst = 0
		if !l.seen || h.position > l.last {
			if !l.ring.floorOK {
				l.ring.floor, l.ring.floorOK = h.position, true
			}
			l.last, l.seen = h.position, true
		}
		cfg.Metrics.Positions.Inc()
		return
	}
	switch {
	case h.hasSeq && l.seen && h.seq <= l.last:
		cfg.Metrics.Dropped.WithLabelValues(DropRepeat).Inc()
		return
	case h.hasSeq:
		l.last, l.seen = h.seq, true
		l.connEntries++
		before := l.ring.bytes
		ev := l.ring.push(h.seq, f)
		cfg.Metrics.HistoryBytes.Add(float64(l.ring.bytes - before))
		cfg.Metrics.HistoryEvicted.Add(float64(ev.entries))
	case h.reset && l.connEntries > 0:
		// Entries coap-server no longer retains went missing after the ones
		// forwarded (retention while it sent history): the position holds,
		// but the ring no longer answers across the gap.
		cfg.Metrics.HistoryBytes.Sub(float64(l.ring.reset()))
	case h.reset:
		cfg.Metrics.Resets.Inc()
		cfg.Metrics.HistoryBytes.Sub(float64(l.ring.reset()))
		l.seen, l.last = false, 0
		// The entries that follow are everything coap-server retains; if
		// none do, a redial asks for whatever it retains by then.
		l.ring.whole, l.ring.depth = true, MaxTail
		l.first = Resume{Mode: Tail, N: MaxTail}
	}
	cfg.Metrics.Frames.Inc()
	// Anyone can replay a device's datagrams, so a flood of retransmission
	// reports must not cut its browsers off: one is dropped where the
	// queue is full.
	delivered, dropped := 0, 0
	for w := range l.watchers {
		var ok bool
		if h.notice {
			ok = w.sender.TrySend(f.pm, f.cost)
		} else {
			ok = w.sender.Send(f.pm, f.cost)
		}
		if ok {
			delivered++
		} else {
			dropped++
		}
	}
	cfg.Metrics.Deliveries.Add(float64(delivered))
	if dropped > 0 {
		reason := DropSlowClient
		if h.notice {
			reason = DropNotice
		}
		cfg.Metrics.Dropped.WithLabelValues(reason).Add(float64(dropped))
	}
}

// release gives back the ring's bytes when the link closes.
func (l *link) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.m.cfg.Metrics.HistoryBytes.Sub(float64(l.ring.reset()))
}
