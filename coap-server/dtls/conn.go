package dtls

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	coapNet "github.com/plgd-dev/go-coap/v3/net"
	netClient "github.com/plgd-dev/go-coap/v3/net/client"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// listener hands go-coap's DTLS server the connections pion accepts,
// refusing those over a limit before any handshake work, and wrapping the
// rest so the handshake's result is counted and logged.
type listener struct {
	inner    net.Listener
	demux    *demux
	limits   *Limiter
	metrics  *Metrics
	log      *slog.Logger
	sessions atomic.Int64
	maxSess  int64
	now      func() time.Time
	// evictable caches, for a second, whether a session is idle enough to
	// give way at maxSess (room): the scan is not paid per hello.
	evictMu    sync.Mutex
	evictAt    time.Time
	evictFound bool
	closed     atomic.Bool
	reg        *registry
	holdClose  atomic.Pointer[func()] // tests only: runs first in every session's Close
	accepted   atomic.Uint64          // numbers sessions in the order they were accepted
	keys       *KeyCache
	debugf     func(msg string, args ...any)
	// makeRoom bounds the scans for a handshake to give way when every
	// slot is taken (makeRoomRate): a peer resending its cookie cannot
	// make each datagram a scan of the table.
	makeRoom *rate.Limiter
	// registering (tests only) runs in every handshake just before its
	// session is registered: a key change then reaches no session.
	registering atomic.Pointer[func()]
	// badOption is nbiot_uplinks_rejected_total{reason="bad_option"},
	// where the handler counts the 4.02s it sends (nil: not counted).
	badOption prometheus.Counter
}

// AcceptWithContext implements go-coap's dtls/server.Listener. Refused
// attempts are closed here and the loop goes on, so go-coap never sees them.
func (l *listener) AcceptWithContext(ctx context.Context) (net.Conn, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c, err := l.inner.Accept()
		if err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return nil, coapNet.ErrListenerIsClosed
			}
			// pion's listener only fails this way when its socket died.
			return nil, err
		}
		pc, ok := c.(*piondtls.Conn)
		if !ok {
			_ = c.Close()
			continue
		}
		peer := l.demux.peer(pc.RemoteAddr().String())
		if peer == nil {
			// Closed before it got here.
			_ = pc.Close()
			continue
		}
		if !l.room() {
			l.refuse(pc, ErrSessions)
			continue
		}
		return &session{
			Conn: pc, l: l, remote: pc.RemoteAddr(), peer: peer, order: l.accepted.Add(1),
			keyMark: l.keys.changeMark(),
		}, nil
	}
}

// verified admits a peer that echoed its cookie (its address is real) to
// the handshake limits; false drops it. It runs on the socket's read loop
// and does no I/O.
func (l *listener) verified(p *peerConn) bool {
	if !l.room() {
		l.metrics.Refused.WithLabelValues(ErrSessions.Error()).Inc()
		return false
	}
	err := l.limits.Acquire(p.raddr)
	if errors.Is(err, ErrInFlight) && l.makeRoom.Allow() {
		// Every slot is taken: one from the address holding the most
		// gives way, if it holds two more than this one's.
		if ip, ok := l.limits.Heaviest(p.raddr); ok && l.demux.closeOldestHandshake(ip) {
			l.metrics.Refused.WithLabelValues(ErrInFlightEvicted.Error()).Inc()
			err = l.limits.Acquire(p.raddr)
		}
	}
	if err != nil {
		l.metrics.Refused.WithLabelValues(err.Error()).Inc()
		l.debugf("dtls attempt refused", "remote", p.raddr.String(), "err", err)
		return false
	}
	p.acquired.Store(true)
	l.metrics.HandshakesInFlight.Inc()
	return true
}

// makeRoomRate bounds, per second, the times a handshake is looked for to
// give way to a newcomer when every slot is taken (Limiter.Heaviest,
// demux.closeOldestHandshake: each a scan of up to the limiter's table and
// the peers, some 100 µs at their bounds; 1% of a core at this rate).
const makeRoomRate = 100

// room reports whether a handshake may start: the sessions are under
// maxSess, or one of them has been idle for EvictIdle and gives way when
// the new one is established (only a device holding its key can push one
// out). At the cap, the answer is cached for a second.
func (l *listener) room() bool {
	if l.sessions.Load() < l.maxSess {
		return true
	}
	now := l.now()
	l.evictMu.Lock()
	defer l.evictMu.Unlock()
	if now.Sub(l.evictAt) >= time.Second || now.Before(l.evictAt) {
		l.evictAt, l.evictFound = now, l.reg.idlest(now, EvictIdle, nil) != nil
	}
	return l.evictFound
}

// release frees the limiter slot of a verified peer, once: when its
// handshake ends, or when it closes first.
func (l *listener) release(p *peerConn) {
	l.limits.Release(p.raddr)
	l.metrics.HandshakesInFlight.Dec()
}

func (l *listener) refuse(c net.Conn, reason error) {
	l.metrics.Refused.WithLabelValues(reason.Error()).Inc()
	l.debugf("dtls attempt refused", "remote", c.RemoteAddr().String(), "err", reason)
	_ = c.Close()
}

// Close implements go-coap's dtls/server.Listener.
func (l *listener) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return nil
	}
	return l.inner.Close()
}

// session is one DTLS connection. go-coap calls HandshakeContext before it
// serves the connection; that is where the handshake is counted, its
// limiter slot released and its identity taken.
type session struct {
	*piondtls.Conn
	l         *listener
	peer      *peerConn
	remote    net.Addr     // where the handshake came from (the limiter's key)
	identity  string       // set once the handshake succeeded
	order     uint64       // accept order: the later of two sessions of one identity wins
	active    atomic.Int64 // l.now() in Unix nanoseconds: established, or the last datagram read
	exchanges exchanges    // the message IDs go-coap may hold answers to
	// keyMark is the key cache's change mark when accepted, before its PSK
	// is looked up: after a change of its identity's key since then, the
	// handshake may have used the old key, and the session is closed.
	keyMark uint64
	revoked atomic.Bool // closed for a key change, once (revoke)

	established bool
	hsOnce      sync.Once
	hsErr       error
	closeOnce   sync.Once
}

// HandshakeContext runs pion's handshake once and accounts for it. go-coap
// calls it before serving and again before every read and write, so only
// the first call does the work; the others wait for it and share its result.
func (s *session) HandshakeContext(ctx context.Context) error {
	s.hsOnce.Do(func() { s.hsErr = s.handshake(ctx) })
	return s.hsErr
}

func (s *session) handshake(ctx context.Context) error {
	err := s.Conn.HandshakeContext(ctx)
	s.peer.releaseSlot()
	id := ""
	if st, ok := s.Conn.ConnectionState(); ok {
		id, _ = ParseIdentity(st.IdentityHint)
	}
	if err != nil {
		s.l.metrics.Handshakes.WithLabelValues("failed").Inc()
		// The identity only: never the key, and pion's errors carry none.
		// Unknown identity and wrong key look alike to the peer (decoy);
		// the log tells them apart, at debug and rate-limited.
		reason := "wrong_key_or_timeout"
		if id != "" && s.l.keys.isUnknown(id) {
			reason = "unknown_identity"
		}
		s.l.debugf("dtls handshake failed", "device", id, "remote", s.remote.String(), "reason", reason, "err", err)
		return err
	}
	if id == "" {
		// The PSK callback gives non-device identities the decoy key; this
		// cannot happen, but an unnamed session must never reach the handler.
		s.l.metrics.Handshakes.WithLabelValues("failed").Inc()
		return ErrIdentity
	}
	if !s.l.keys.isKnown(id) {
		// Its key was deleted while the handshake ran.
		s.l.metrics.Handshakes.WithLabelValues("failed").Inc()
		return ErrUnknownDevice
	}
	s.identity = id
	s.established = true
	s.active.Store(s.l.now().UnixNano())
	s.peer.established.Store(true)
	s.l.sessions.Add(1)
	s.l.metrics.Sessions.Inc()
	s.l.metrics.Handshakes.WithLabelValues("ok").Inc()
	s.l.log.Debug("dtls session established", "device", id, "remote", s.remote.String())
	if hook := s.l.registering.Load(); hook != nil {
		(*hook)()
	}
	older, closed := s.l.reg.add(s)
	if closed {
		return net.ErrClosed // finished after Stop
	}
	if older != nil {
		// One session per identity: the device reconnected (new NAT
		// binding without a CID, reboot) or someone has its key. older
		// is s itself when a later-accepted session registered first.
		s.l.metrics.SessionsClosed.WithLabelValues("replaced").Inc()
		s.l.log.Debug("dtls session replaced by a newer handshake", "device", id, "old_remote", older.remote.String())
		_ = older.Close()
		if older == s {
			return ErrReplaced
		}
	}
	if s.l.keys.changedSince(id, s.keyMark) {
		// Its key was deleted or replaced during the handshake, perhaps
		// after pion had looked it up (a client may hold back its Finished
		// until HandshakeTimeout): it may have the old key. The change's
		// closeIdentity found nothing registered if it ran before reg.add;
		// if it runs after, it closes s too (revoke counts one).
		s.revoke()
		return ErrRevoked
	}
	if s.l.sessions.Load() > s.l.maxSess {
		// At the cap: the session idle the longest gives way, if one has
		// been for EvictIdle; else this one does (they became busy since
		// room said yes).
		victim := s.l.reg.takeIdlest(s.l.now(), EvictIdle, s)
		if victim == nil {
			s.l.metrics.Refused.WithLabelValues(ErrSessions.Error()).Inc()
			return ErrSessions
		}
		s.l.metrics.SessionsClosed.WithLabelValues("evicted").Inc()
		s.l.log.Debug("dtls session evicted for a new one at the session limit", "device", victim.identity, "idle", time.Duration(s.l.now().UnixNano()-victim.active.Load()))
		_ = victim.Close()
	}
	return nil
}

// MaxExchanges bounds the requests with distinct message IDs a session
// may have had answered within exchangeWindow: go-coap's DTLS server keeps
// every answer for EXCHANGE_LIFETIME (247 s) to repeat it to a
// retransmission, and has no option to bound that cache, so the bound is
// on what reaches it. A device may start 32 exchanges in any 252 s (one
// per 8 s sustained); a request past that is dropped (counted as
// nbiot_dtls_requests_dropped_total{reason="exchanges"}) and the device
// retransmits it; a retransmission of an admitted one always passes.
const MaxExchanges = 32

// exchangeWindow is how long go-coap may hold an answer: EXCHANGE_LIFETIME
// plus its sweep of expired ones (every few seconds).
const exchangeWindow = 247*time.Second + 5*time.Second

// exchanges is a session's recent message IDs, oldest first.
type exchanges struct {
	mu    sync.Mutex
	mid   [MaxExchanges]uint16
	at    [MaxExchanges]int64
	start int
	n     int
}

// admit reports whether a request with mid may be processed at now (Unix
// nanoseconds), and records it.
func (x *exchanges) admit(mid uint16, now int64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	for x.n > 0 && now-x.at[x.start] >= int64(exchangeWindow) {
		x.start = (x.start + 1) % MaxExchanges
		x.n--
	}
	for i := range x.n {
		if x.mid[(x.start+i)%MaxExchanges] == mid {
			return true // a retransmission: answered from the cache
		}
	}
	if x.n == MaxExchanges {
		return false
	}
	j := (x.start + x.n) % MaxExchanges
	x.mid[j], x.at[j] = mid, now
	x.n++
	return true
}

// admitRequest is go-coap's request monitor: it drops a request (true)
// past its session's MaxExchanges. ACKs and RSTs are not answered, so not
// cached: they pass.
func (l *listener) admitRequest(cc *udpClient.Conn, req *pool.Message) (bool, error) {
	s, ok := cc.NetConn().(*session)
	if !ok || (req.Type() != message.Confirmable && req.Type() != message.NonConfirmable) {
		return false, nil
	}
	if s.exchanges.admit(uint16(req.MessageID()), l.now().UnixNano()) {
		return false, nil
	}
	l.metrics.RequestsDropped.WithLabelValues("exchanges").Inc()
	return true, nil
}

// Read reads one datagram's payload, records the session's activity and
// counts what go-coap refuses in it (screen).
func (s *session) Read(b []byte) (int, error) {
	n, err := s.Conn.Read(b)
	if n > 0 {
		s.active.Store(s.l.now().UnixNano())
		s.l.screen(b[:n])
	}
	return n, err
}

// screen counts the datagrams of a session that go-coap (v3.8.0,
// udp/client Conn.Process) refuses before any hook of ours sees them,
// deciding as it does: one it cannot decode (malformed: dtls/server
// Session.Run drops it, answering a CON with RST) and a request with a
// critical option it does not know (bad_option: it answers a CON 4.02
// itself, drops a NON). Neither reaches the Errors callback, the request
// monitor or the handler, so only a second decode here sees them: two
// allocations, some 500 B, a datagram (go-coap's own handling costs more).
func (l *listener) screen(b []byte) {
	var opts [16]message.Option
	m := message.Message{Options: opts[:0]}
	_, err := coder.DefaultCoder.Decode(b, &m)
	for errors.Is(err, message.ErrOptionsTooSmall) {
		// As go-coap's pool.Message: a larger buffer, again. The
		// datagram bounds the options, so this ends.
		m.Options = make(message.Options, 0, 2*cap(m.Options))
		_, err = coder.DefaultCoder.Decode(b, &m)
	}
	if err != nil {
		l.metrics.Datagrams.WithLabelValues("malformed").Inc()
		return
	}
	request := (m.Type == message.Confirmable || m.Type == message.NonConfirmable) && m.Code >= codes.GET && m.Code < 32
	// Q-Block options count as unknown: block-wise is off (Listen).
	if request && l.badOption != nil && len(netClient.GetUnknownCriticalOptionsWithQBlock(m.Options, false)) > 0 {
		l.badOption.Inc()
	}
}

// ErrRevoked ends a handshake whose identity's key was deleted or replaced
// while it ran: it may have been made with the old key.
var ErrRevoked = errors.New("dtls: the key changed during the handshake")

// revoke closes s because its identity's key was deleted or replaced,
// counted and logged once: closeIdentity and s's own check after it was
// registered may both find it.
func (s *session) revoke() {
	if !s.revoked.CompareAndSwap(false, true) {
		return
	}
	s.l.metrics.SessionsClosed.WithLabelValues("revoked").Inc()
	s.l.log.Info("dtls session closed: its key changed or was deleted", "device", s.identity)
	_ = s.Close()
}

// Close closes the connection once and frees its session slot.
func (s *session) Close() error {
	if hold := s.l.holdClose.Load(); hold != nil {
		(*hold)()
	}
	err := s.Conn.Close()
	s.closeOnce.Do(func() {
		if s.established {
			s.l.reg.remove(s)
			s.l.sessions.Add(-1)
			s.l.metrics.Sessions.Dec()
		}
	})
	return err
}
