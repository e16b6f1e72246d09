// Package upstream holds the relay's links to coap-server's /ws: one per
// watched device, shared by every browser watching it, opened with the
// first watcher and closed with the last. A lost link is re-established
// with exponential backoff and jitter, never giving up, while the browsers
// stay connected and are told with one status entry when their stream is
// interrupted and one when it is restored.
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
)

// Sender is a watcher: a non-blocking send that reports false when the
// frame was not queued (a *wspeer.Peer).
type Sender interface {
	Send(*websocket.PreparedMessage) bool
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
	// MaxDevices bounds the links (devices watched at once). Default 1000,
	// under coap-server's 10000 /ws subscribers.
	MaxDevices int
	// Now stamps status entries. Default time.Now.
	Now func() time.Time
	// Logger gets link events with the device key.
	Logger *slog.Logger
	// Metrics must be set.
	Metrics *Metrics
}

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

	mu     sync.Mutex
	links  map[string]*link
	closed bool
	wg     sync.WaitGroup
}

// New returns a manager; links are opened by Watch.
func New(cfg Config) *Manager {
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{cfg: cfg.withDefaults(), ctx: ctx, cancel: cancel, links: make(map[string]*link)}
}

// Watch adds s to deviceID's stream, opening the device's link if s is its
// first watcher. s receives every frame the link reads from now on.
func (m *Manager) Watch(deviceID string, s Sender) (*Watch, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	l := m.links[deviceID]
	if l != nil {
		w := &Watch{link: l, sender: s}
		l.add(w)
		return w, nil
	}
	if len(m.links) >= m.cfg.MaxDevices {
		return nil, ErrTooManyDevices
	}
	l = newLink(m, deviceID)
	m.links[deviceID] = l
	m.cfg.Metrics.Upstreams.Inc()
	// The first watcher is in place before the link reads anything.
	w := &Watch{link: l, sender: s}
	l.add(w)
	m.wg.Add(1)
	go l.run()
	return w, nil
}

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
	if l.remove(w) == 0 && m.links[l.device] == l {
		delete(m.links, l.device)
		m.cfg.Metrics.Upstreams.Dec()
		l.cancel()
	}
}

// upstreamURL is cfg.URL with deviceId set.
func (m *Manager) upstreamURL(deviceID string) (string, error) {
	u, err := url.Parse(m.cfg.URL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("deviceId", deviceID)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func (m *Manager) header() http.Header {
	return http.Header{"Authorization": {"Bearer " + m.cfg.Token}}
}

// Watch is one watcher of one device.
type Watch struct {
	link   *link
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
	case <-w.link.firstAttempt:
		return true
	case <-ctx.Done():
		return false
	}
}

// Close stops the watch; it is idempotent.
func (w *Watch) Close() {
	w.once.Do(func() { w.link.m.remove(w) })
}
