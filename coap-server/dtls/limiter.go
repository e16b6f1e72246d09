package dtls

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/nbiot-live/nbiot-live/internal/memlimit"
)

// Reasons a connection attempt is refused before any handshake work. Each
// is also the label of nbiot_dtls_refused_total.
var (
	ErrPerIPInFlight = errors.New("per_ip_inflight")
	ErrPerIPRate     = errors.New("per_ip_rate")
	ErrInFlight      = errors.New("inflight")
	ErrTableFull     = errors.New("table_full")
	ErrSessions      = errors.New("sessions")
	// ErrBacklog: admitted, but pion's accept queue was full.
	ErrBacklog = errors.New("backlog")
	// ErrInFlightEvicted: not a refusal of the newcomer; a handshake of
	// the address holding the most slots was ended to make room for it.
	ErrInFlightEvicted = errors.New("inflight_evicted")
	// ErrHandshakeBytes: the peer sent more than HandshakeBytes before
	// its handshake completed, and was closed.
	ErrHandshakeBytes = errors.New("handshake_bytes")
)

// LimitConfig bounds handshakes so that junk ClientHellos cannot exhaust
// memory. Limits are per source IPv4 address or IPv6 /64, not per port:
// one host can pick any number of ports (and of addresses in its /64). They are generous because a carrier-grade NAT puts many
// devices behind one IP. Zero fields take the defaults.
type LimitConfig struct {
	// PerIPInFlight (default 32) bounds handshakes under way from one IP.
	PerIPInFlight int
	// PerIPRate (default 10/s) and PerIPBurst (default 40) bound new
	// handshakes from one IP (a golang.org/x/time/rate token bucket).
	PerIPRate  float64
	PerIPBurst int
	// InFlight (default 1024) bounds handshakes under way in total.
	InFlight int
	// MaxIPs (default DefaultMaxIPs of the process's memory) bounds the
	// table of source IPs: those that echoed a cookie within the few
	// seconds their rate bucket takes to refill. Past it a new address is
	// refused (table_full) until a sweep frees room.
	MaxIPs int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *LimitConfig) defaults() {
	if c.PerIPInFlight <= 0 {
		c.PerIPInFlight = 32
	}
	if c.PerIPRate <= 0 {
		c.PerIPRate = 10
	}
	if c.PerIPBurst <= 0 {
		c.PerIPBurst = 40
	}
	if c.InFlight <= 0 {
		c.InFlight = 1024
	}
	if c.MaxIPs <= 0 {
		c.MaxIPs = DefaultMaxIPs(memlimit.Bytes())
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// ipEntryBytes is what one source IP in the table is charged: its key,
// state and token bucket, and its place in the map, measured at 161 B
// (TestIPEntryBytesCoverASourceIP).
const ipEntryBytes = 256

// DefaultMaxIPs is MaxIPs' default: as many source IPs as a 128th of
// memory holds at ipEntryBytes (12,800 at GOMEMLIMIT=400MiB: 3.1 MiB), at
// least 1024.
func DefaultMaxIPs(memory int64) int {
	return int(max(memory/128/ipEntryBytes, 1024))
}

type ipState struct {
	inflight int
	bucket   *rate.Limiter // PerIPRate, PerIPBurst; starts full
}

// Limiter admits handshakes. Acquire before the handshake, Release after it
// (whatever its result).
type Limiter struct {
	cfg      LimitConfig
	mu       sync.Mutex
	inflight int
	ips      map[netip.Addr]*ipState
	swept    time.Time
}

// NewLimiter returns a limiter with cfg's bounds.
func NewLimiter(cfg LimitConfig) *Limiter {
	cfg.defaults()
	return &Limiter{cfg: cfg, ips: make(map[netip.Addr]*ipState)}
}

// Acquire admits one handshake from addr or says which limit refused it.
func (l *Limiter) Acquire(addr net.Addr) error {
	ip := ipOf(addr)
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inflight >= l.cfg.InFlight {
		return ErrInFlight
	}
	st, ok := l.ips[ip]
	if !ok {
		if len(l.ips) >= l.cfg.MaxIPs && !l.sweep(now) {
			return ErrTableFull
		}
		st = &ipState{bucket: rate.NewLimiter(rate.Limit(l.cfg.PerIPRate), l.cfg.PerIPBurst)}
		l.ips[ip] = st
	}
	if st.inflight >= l.cfg.PerIPInFlight {
		return ErrPerIPInFlight
	}
	// AllowN takes a token only when it admits, and reads the injected clock.
	if !st.bucket.AllowN(now, 1) {
		return ErrPerIPRate
	}
	st.inflight++
	l.inflight++
	return nil
}

// Heaviest names the address to take a handshake from when the total is
// at InFlight and addr asks for one: the one with the most under way, if
// it has at least two more than addr (one more would only swap them).
// Evicting its oldest gives every address a share of the slots: a few
// addresses stalling handshakes until the timeout (32 each fill 1,024)
// can no longer keep every other device from starting one. O(addresses
// in the table); it runs only when the slots are all taken.
func (l *Limiter) Heaviest(addr net.Addr) (netip.Addr, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inflight < l.cfg.InFlight {
		return netip.Addr{}, false
	}
	mine := 0
	if st, ok := l.ips[ipOf(addr)]; ok {
		mine = st.inflight
	}
	var top netip.Addr
	most := 0
	for ip, st := range l.ips {
		if st.inflight > most {
			top, most = ip, st.inflight
		}
	}
	return top, most >= mine+2
}

// Release ends a handshake admitted by Acquire.
func (l *Limiter) Release(addr net.Addr) {
	ip := ipOf(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, ok := l.ips[ip]; ok && st.inflight > 0 {
		st.inflight--
		l.inflight--
	}
}

// InFlight is the number of handshakes admitted and not released.
func (l *Limiter) InFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inflight
}

// sweep drops idle IPs (nothing in flight, bucket full again) and reports
// whether there is room. It runs only when the table is full.
// At most once a second, so a flood from many addresses cannot make every
// attempt a full scan.
func (l *Limiter) sweep(now time.Time) bool {
	if now.Sub(l.swept) < time.Second {
		return false
	}
	l.swept = now
	for ip, st := range l.ips {
		if st.inflight == 0 && st.bucket.TokensAt(now) >= float64(l.cfg.PerIPBurst) {
			delete(l.ips, ip)
		}
	}
	return len(l.ips) < l.cfg.MaxIPs
}

// ipOf is the limiter's key for addr: the IPv4 address, or the IPv6 /64
// (one subscriber's prefix: a host picks any address in it at will, so
// per-address limits on IPv6 would not limit anything).
func ipOf(addr net.Addr) netip.Addr {
	var ip netip.Addr
	if u, ok := addr.(*net.UDPAddr); ok {
		ip, _ = netip.AddrFromSlice(u.IP)
	} else if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	if ip.Is6() {
		if p, err := ip.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return ip
}
