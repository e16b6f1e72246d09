// Package upstream holds the relay's links to coap-server's /ws: one per
// watched device, shared by every browser watching it, opened with the
// first watcher and closed with the last. A lost link is re-established
// with exponential backoff and jitter, never giving up, while the browsers
// stay connected and are told with one status entry when their stream is
// interrupted and one when it is restored.
//
// Every entry carries seq, its stream position. A link remembers the last
// seq it forwarded and reconnects with since= that seq, dropping anything
// not newer, so an upstream restart costs its watchers no entry and no
// repeat. It also keeps its most recent entries in a bounded ring, from
// which a new watcher's since= or tail= is answered before it is attached
// to the live link under the link's lock (no gap, no repeat). A start the
// ring cannot answer gets a dedicated upstream connection of its own.
package upstream

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

// Sender is a watcher (a *wspeer.Peer): Send queues a frame costing cost
// bytes (wspeer.FrameCost) without blocking and reports false when it was
// not queued (a full queue cuts the watcher off); TrySend queues one the
// watcher can go without, only if there is room, and leaves the watcher
// open either way.
type Sender interface {
	Send(pm *websocket.PreparedMessage, cost int) bool
	TrySend(pm *websocket.PreparedMessage, cost int) bool
}

// Backlog is what a new watcher may be sent in one burst before it can
// start writing: Frames frames costing at most Bytes (what a history still
// on its way may bring is counted at ReadLimit a frame).
type Backlog struct {
	Frames int
	Bytes  int
}

// Sentinel errors of Watch.
var (
	ErrClosed         = errors.New("upstream: manager closed")
	ErrTooManyDevices = errors.New("upstream: too many watched devices")
)

// Config tunes a Manager. The zero value of a field takes the default.
type Config struct {
	// URL is coap-server's /ws endpoint (UPSTREAM_URL); ?deviceId= is added.
	URL string
	// Token is sent as Authorization: Bearer (UPSTREAM_TOKEN).
	Token string
	// Dialer dials upstream. Default: 10 s handshake timeout.
	Dialer *websocket.Dialer
	// NewBackOff returns the reconnect policy of one link. Default:
	// 250 ms initial, ×2, ±50 % jitter, at most 30 s apart, never giving up
	// (MaxElapsedTime 0: the default 15 min would stop reconnecting for good).
	NewBackOff func() backoff.BackOff
	// StableAfter is how long a connection must last for the backoff to
	// start again from its initial interval. Default 10 s: an upstream that
	// accepts and drops at once (flapping) is retried ever more slowly, so
	// watchers get at most one lost/restored pair per backoff interval.
	StableAfter time.Duration
	// ReadLimit bounds one upstream frame. Default 64 KiB (a live-log
	// entry is well under 2 KiB); a larger one ends the link, which reconnects.
	ReadLimit int64
	// IdleTimeout ends a link that received nothing, not even a ping, for
	// this long. Default 90 s: coap-server pings every 30 s.
	IdleTimeout time.Duration
	// MaxDevices bounds the upstream connections: shared links (devices
	// watched at once) plus dedicated ones. Default 1000, under
	// coap-server's 10000 /ws subscribers.
	MaxDevices int
	// History bounds the entries each shared link keeps to answer since=
	// and tail= (RELAY_HISTORY). Default DefaultHistory; negative keeps
	// none (every such start then gets a dedicated connection).
	History int
	// OutageTail is how many entries more than its tail (none for a live
	// one) a link asks for when it redials before it knew its position,
	// for those published while it was away. Default History, or
	// DefaultHistory when History keeps none.
	OutageTail int
	// HistoryBytes bounds the memory of one link's kept entries
	// (RELAY_HISTORY_BYTES): their JSON plus 400 bytes each (the prepared
	// frame and its bookkeeping). Default DefaultHistoryBytes.
	HistoryBytes int
	// HistoryBurst is how long after a connection opens the history it
	// asked for may still be arriving, so that a watcher attached
	// meanwhile gets queue room for the rest. Default 10 s (coap-server
	// sends 1,000 entries in about 0.1 s).
	HistoryBurst time.Duration
	// MergeEvery is how often a dedicated link checks, besides after each
	// entry it forwards, whether its watcher can move to the shared link.
	// Default 1 s.
	MergeEvery time.Duration
	// Now stamps status entries. Default time.Now.
	Now func() time.Time
	// Logger gets link events with the device key.
	Logger *slog.Logger
	// Metrics must be set.
	Metrics *Metrics
}

// History defaults: 100 entries (the page's tail) within 128 KiB per
// watched device; a typical 400-byte uplink entry costs about 800 bytes
// kept, so 100 of them take 80 KB.
const (
	DefaultHistory      = 100
	DefaultHistoryBytes = 128 << 10
)

// DefaultBackOff is the default reconnect policy (see Config.NewBackOff).
func DefaultBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 250 * time.Millisecond
	b.Multiplier = 2
	b.RandomizationFactor = 0.5
	b.MaxInterval = 30 * time.Second
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

func (c Config) withDefaults() Config {
	if c.Dialer == nil {
		c.Dialer = &websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 1024}
	}
	if c.NewBackOff == nil {
		c.NewBackOff = DefaultBackOff
	}
	if c.StableAfter <= 0 {
		c.StableAfter = 10 * time.Second
	}
	if c.ReadLimit <= 0 {
		c.ReadLimit = 64 << 10
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 90 * time.Second
	}
	if c.MaxDevices <= 0 {
		c.MaxDevices = 1000
	}
	switch {
	case c.History == 0:
		c.History = DefaultHistory
	case c.History < 0:
		c.History = 0
	}
	if c.HistoryBytes <= 0 {
		c.HistoryBytes = DefaultHistoryBytes
	}
	if c.OutageTail <= 0 {
		c.OutageTail = c.History
		if c.OutageTail == 0 {
			c.OutageTail = DefaultHistory
		}
	}
	if c.HistoryBurst <= 0 {
		c.HistoryBurst = 10 * time.Second
	}
	if c.MergeEvery <= 0 {
		c.MergeEvery = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Manager owns the links. It is safe for concurrent use.
type Manager struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	links     map[string]*link
	dedicated map[*link]struct{}
	closed    bool
	wg        sync.WaitGroup
}

// New returns a manager; links are opened by Watch.
func New(cfg Config) *Manager {
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{cfg: cfg.withDefaults(), ctx: ctx, cancel: cancel,
		links: make(map[string]*link), dedicated: make(map[*link]struct{})}
}

// Watch adds s to deviceID's live stream (WatchFrom with LiveOnly).
func (m *Manager) Watch(deviceID string, s Sender) (*Watch, error) {
	return m.WatchFrom(deviceID, LiveOnly, func(Backlog) Sender { return s })
}

// WatchFrom adds a watcher to deviceID's stream starting at r. newSender
// is called once, under the manager's lock, with what the watcher may be
// sent in one burst before it can start writing (the ring's answer plus
// what the link's current connection may still send of its own history,
// or r's bound when the start is served upstream), so that its queue can
// hold it: it must not block or call back into the manager.
//
// The device's shared link answers r from its ring when it can; the
// first watcher opens the link with r itself; any other start gets a
// dedicated upstream connection with r, which hands its watcher over to
// the shared link once that one's ring covers where it is (see merge).
// Dedicated links count against MaxDevices too.
func (m *Manager) WatchFrom(deviceID string, r Resume, newSender func(Backlog) Sender) (*Watch, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if l := m.links[deviceID]; l != nil {
		l.mu.Lock()
		backlog, ok := l.serve(r)
		if ok {
			pending := l.pending()
			b := Backlog{Frames: len(backlog) + pending, Bytes: pending * m.frameCostMax()}
			for _, f := range backlog {
				b.Bytes += f.cost
			}
			w := &Watch{m: m, link: l, first: l.firstAttempt, sender: newSender(b)}
			l.attachLocked(w, backlog)
			l.mu.Unlock()
			if r.Mode != Live {
				m.cfg.Metrics.Starts.WithLabelValues(StartRing).Inc()
			}
			return w, nil
		}
		l.mu.Unlock()
		if m.upstreamsLocked() >= m.cfg.MaxDevices {
			return nil, ErrTooManyDevices
		}
		l = newLink(m, deviceID, r)
		l.dedicated.Store(true)
		m.dedicated[l] = struct{}{}
		m.cfg.Metrics.Dedicated.Inc()
		m.cfg.Metrics.Starts.WithLabelValues(StartDedicated).Inc()
		m.cfg.Logger.Debug("dedicated upstream", "device", deviceID, "from", r.String())
		return m.startLocked(l, newSender(m.upstreamBacklog(r))), nil
	}
	if m.upstreamsLocked() >= m.cfg.MaxDevices {
		return nil, ErrTooManyDevices
	}
	l := newLink(m, deviceID, r)
	m.links[deviceID] = l
	m.cfg.Metrics.Upstreams.Inc()
	if r.Mode != Live {
		m.cfg.Metrics.Starts.WithLabelValues(StartUpstream).Inc()
	}
	return m.startLocked(l, newSender(m.upstreamBacklog(r))), nil
}

// frameCostMax is what the largest frame an upstream may send costs.
func (m *Manager) frameCostMax() int { return wspeer.FrameCost(int(m.cfg.ReadLimit)) }

// upstreamBacklog bounds what a start served by a new upstream connection
// may bring in one burst: r's bound, each frame at its largest.
func (m *Manager) upstreamBacklog(r Resume) Backlog {
	n := r.backlog()
	return Backlog{Frames: n, Bytes: n * m.frameCostMax()}
}

// startLocked adds the link's first watcher and runs it; the watcher is
// in place before the link reads anything.
func (m *Manager) startLocked(l *link, s Sender) *Watch {
	w := &Watch{m: m, link: l, first: l.firstAttempt, sender: s}
	l.add(w)
	m.wg.Add(1)
	go l.run()
	if l.dedicated.Load() {
		m.wg.Add(1)
		go m.mergeLater(l)
	}
	return w
}

func (m *Manager) upstreamsLocked() int { return len(m.links) + len(m.dedicated) }

// Devices is the number of open links, for tests and metrics.
func (m *Manager) Devices() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.links)
}

// Close closes every link and waits for them to end. It is idempotent.
func (m *Manager) Close() {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		for d, l := range m.links {
			delete(m.links, d)
			m.cfg.Metrics.Upstreams.Dec()
			l.cancel()
		}
		for l := range m.dedicated {
			delete(m.dedicated, l)
			m.cfg.Metrics.Dedicated.Dec()
			l.cancel()
		}
	}
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// remove drops w and closes its link when w was the last watcher.
func (m *Manager) remove(w *Watch) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := w.link
	if l.remove(w) != 0 {
		return
	}
	if _, ok := m.dedicated[l]; ok {
		delete(m.dedicated, l)
		l.dedicated.Store(false)
		m.cfg.Metrics.Dedicated.Dec()
		l.cancel()
	} else if m.links[l.device] == l {
		delete(m.links, l.device)
		m.cfg.Metrics.Upstreams.Dec()
		l.cancel()
	}
}

// upstreamURL is cfg.URL with deviceId and r's since or tail set,
// retransmissions=1 (coap-server then also sends its retransmission
// reports that are not retained, no seq, which the page marks on the
// original uplink; they are forwarded to every watcher and move no
// position) and position=1 (coap-server says, once its history is sent,
// up to which position the link has everything: the link resumes after it
// even when no entry came; never forwarded).
func (m *Manager) upstreamURL(deviceID string, r Resume) (string, error) {
	u, err := url.Parse(m.cfg.URL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("deviceId", deviceID)
	q.Del("since")
	q.Del("tail")
	q.Set("retransmissions", "1")
	q.Set("position", "1")
	r.query(q)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func (m *Manager) header() http.Header {
	return http.Header{"Authorization": {"Bearer " + m.cfg.Token}}
}

// Watch is one watcher of one device.
type Watch struct {
	m      *Manager
	link   *link // guarded by m.mu: a merge moves the watcher to the shared link
	first  chan struct{}
	sender Sender
	once   sync.Once
}

// WaitFirstAttempt waits until the device's link has made its first
// connection attempt, or ctx ends. After a successful first attempt the
// upstream subscription exists on coap-server (it subscribes before its
// 101), so a browser whose handshake is answered after this returns
// receives every uplink from then on. After a failed one the watcher has
// been sent a "lost" status and the link keeps retrying.
func (w *Watch) WaitFirstAttempt(ctx context.Context) bool {
	select {
	case <-w.first:
		return true
	case <-ctx.Done():
		return false
	}
}

// Close stops the watch; it is idempotent.
func (w *Watch) Close() {
	w.once.Do(func() { w.m.remove(w) })
}
