package upstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
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

// link is the upstream connection of one device.
type link struct {
	m      *Manager
	device string
	ctx    context.Context
	cancel context.CancelFunc

	firstAttempt chan struct{} // closed after the first dial, either way
	firstOnce    sync.Once

	mu       sync.RWMutex
	watchers map[*Watch]struct{}
	state    state
}

func newLink(m *Manager, device string) *link {
	ctx, cancel := context.WithCancel(m.ctx)
	return &link{
		m: m, device: device, ctx: ctx, cancel: cancel,
		firstAttempt: make(chan struct{}),
		watchers:     make(map[*Watch]struct{}),
	}
}

// add registers w; a watcher joining while the link is down is told at once.
func (l *link) add(w *Watch) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.watchers[w] = struct{}{}
	if l.state == stateDown {
		if pm := l.status(StatusLost); pm != nil {
			l.m.cfg.Metrics.Statuses.WithLabelValues(StatusLost).Inc()
			w.sender.Send(pm)
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
	pm := l.status(what)
	if pm == nil {
		return
	}
	for w := range l.watchers {
		l.m.cfg.Metrics.Statuses.WithLabelValues(what).Inc()
		if !w.sender.Send(pm) {
			l.m.cfg.Metrics.Dropped.WithLabelValues(DropSlowClient).Inc()
		}
	}
}

// status encodes a status entry once for every watcher.
func (l *link) status(what string) *websocket.PreparedMessage {
	msg := "Live stream restored"
	if what == StatusLost {
		msg = "Live stream interrupted: reconnecting to coap-server"
	}
	b, err := livelog.Status(l.device, l.m.cfg.Now(), msg, map[string]string{"upstream": what}).Marshal()
	if err != nil {
		return nil
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
	if err != nil {
		return nil
	}
	return pm
}

// run connects, reads and reconnects until the link is cancelled.
func (l *link) run() {
	defer l.m.wg.Done()
	defer l.firstOnce.Do(func() { close(l.firstAttempt) })
	cfg := &l.m.cfg
	log := cfg.Logger.With("device", l.device)
	b := cfg.NewBackOff()
	b.Reset()
	connectedBefore := false
	for {
		conn, err := l.dial()
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
			l.setState(stateUp)
			l.firstOnce.Do(func() { close(l.firstAttempt) })
			cfg.Metrics.Connected.Inc()
			if connectedBefore {
				cfg.Metrics.Reconnects.Inc()
				log.Info("upstream restored")
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
			// stop reconnecting while browsers watch (NOTES: MaxElapsedTime).
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

func (l *link) dial() (*websocket.Conn, error) {
	u, err := l.m.upstreamURL(l.device)
	if err != nil {
		return nil, fmt.Errorf("UPSTREAM_URL: %w", err)
	}
	conn, resp, err := l.m.cfg.Dialer.DialContext(l.ctx, u, l.m.header())
	if err != nil {
		if resp != nil {
			_ = resp.Body.Close()
			// Never the URL or headers: only the status says what went wrong.
			return nil, fmt.Errorf("upstream answered %d: %w", resp.StatusCode, err)
		}
		return nil, err
	}
	return conn, nil
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
	}
}

// forward checks one upstream frame and queues it, encoded once, for
// every watcher. Defence in depth: coap-server only sends the device asked
// for, but a frame for another device must never reach these browsers.
func (l *link) forward(typ int, b []byte) {
	cfg := &l.m.cfg
	if typ != websocket.TextMessage {
		cfg.Metrics.Dropped.WithLabelValues(DropBinary).Inc()
		return
	}
	id, err := livelog.PeekDeviceID(b)
	if err != nil {
		cfg.Metrics.Dropped.WithLabelValues(DropUndecodable).Inc()
		return
	}
	if id != l.device {
		cfg.Metrics.Dropped.WithLabelValues(DropForeignDevice).Inc()
		return
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
	if err != nil {
		cfg.Metrics.Dropped.WithLabelValues(DropUndecodable).Inc()
		return
	}
	cfg.Metrics.Frames.Inc()
	l.mu.RLock()
	defer l.mu.RUnlock()
	delivered, dropped := 0, 0
	for w := range l.watchers {
		if w.sender.Send(pm) {
			delivered++
		} else {
			dropped++
		}
	}
	cfg.Metrics.Deliveries.Add(float64(delivered))
	if dropped > 0 {
		cfg.Metrics.Dropped.WithLabelValues(DropSlowClient).Add(float64(dropped))
	}
}
