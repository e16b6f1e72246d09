// Package connlimit bounds the TCP connections an HTTP server holds.
// net/http gives every connection it accepts a goroutine and its buffers
// (about 15 KB) before any handler runs, so the bounds a handler keeps
// (the /ws subscribers, the relay's browsers) do not bound a client that
// opens connections and sends half a request (held ReadHeaderTimeout) or
// one request and then idles (held IdleTimeout): 28,000 of them filled a
// 400 MiB process. A Listener refuses a connection past its bound at once,
// with a 503, and counts it.
package connlimit

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ConnBytes is what one accepted connection costs before its handler
// runs, measured: 14.6 KB for a connection with half a request sent
// (goroutine, bufio reader and writer, the conn's state), rounded up.
const ConnBytes = 16 << 10

// Share is the number of connections a share of the memory holds, at
// least 64 (a development machine with a tiny limit still serves).
func Share(memory int64, divisor int64) int {
	return int(max(memory/divisor/ConnBytes, 64))
}

// Metrics counts a Listener's connections.
type Metrics struct {
	Open    prometheus.Gauge
	Refused prometheus.Counter
}

// NewMetrics registers <prefix>_http_connections and
// <prefix>_http_connections_refused_total on reg.
func NewMetrics(reg prometheus.Registerer, prefix string) *Metrics {
	m := &Metrics{
		Open: prometheus.NewGauge(prometheus.GaugeOpts{Name: prefix + "_http_connections",
			Help: "Open TCP connections of the HTTP listener (WebSockets included)."}),
		Refused: prometheus.NewCounter(prometheus.CounterOpts{Name: prefix + "_http_connections_refused_total",
			Help: "TCP connections refused with a 503 because the HTTP listener held its bound."}),
	}
	reg.MustRegister(m.Open, m.Refused)
	return m
}

// Listener is a net.Listener that holds at most max connections.
type Listener struct {
	net.Listener
	max  int64
	open atomic.Int64
	m    *Metrics
}

// New bounds ln to max open connections (a WebSocket counts until it is
// closed). m may be nil.
func New(ln net.Listener, max int, m *Metrics) *Listener {
	return &Listener{Listener: ln, max: int64(max), m: m}
}

// Open is the number of connections open now.
func (l *Listener) Open() int { return int(l.open.Load()) }

// refusal is what a connection past the bound is told: a client sees why,
// a proxy (Fly's) can retry elsewhere.
var refusal = func() []byte {
	body := "too many connections, retry\n"
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" + body)
}()

// Accept returns the next connection within the bound; those past it are
// answered 503 and closed, without a goroutine.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			if l.m != nil {
				l.m.Refused.Inc()
			}
			// A fresh socket's send buffer is empty: the write does not
			// wait, and the deadline makes sure of it.
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
			_, _ = c.Write(refusal)
			_ = c.Close()
			continue
		}
		if l.m != nil {
			l.m.Open.Inc()
		}
		return &conn{Conn: c, l: l}, nil
	}
}

// conn gives its place back once, when closed (by net/http, or by the
// WebSocket that hijacked it).
type conn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.open.Add(-1)
		if c.l.m != nil {
			c.l.m.Open.Dec()
		}
	})
	return err
}
