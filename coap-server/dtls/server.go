// Package dtls is coap-server's CoAPS listener (RFC 7252 §9.1): DTLS 1.2
// with pre-shared keys (RFC 4279), the PSK identity being the device ID,
// and Connection IDs (RFC 9146) so a device whose NAT binding changed while
// it slept keeps its session instead of paying for a new handshake.
//
// Keys come from device_credentials through a bounded cache with negative
// entries, re-read every few seconds so a deleted or replaced key closes
// its sessions; one session per identity. A ClientHello is first answered
// with a stateless HelloVerifyRequest (RFC 6347 §4.2.1, cookie.go); only a
// peer that echoes the cookie is admitted by per-IP and global limits, and
// only then does pion do any work for it; failures are counted and logged
// with the identity only.
package dtls

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/dtls/server"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/options"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"golang.org/x/time/rate"

	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
)

// CipherSuites are the suites offered, strongest first. Both are PSK-only
// (no ECDHE: constrained modems often lack it): AES-128-CCM-8 is the CoAP
// mandatory-to-implement suite (RFC 7252 §9.1.3.1), AES-128-GCM-SHA256 the
// one TLS stacks without CCM offer.
var CipherSuites = []piondtls.CipherSuiteID{
	piondtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
	piondtls.TLS_PSK_WITH_AES_128_CCM_8,
	piondtls.TLS_PSK_WITH_AES_128_CCM,
}

// CIDLength is the length of the Connection IDs the server asks clients to
// send (RFC 9146 §3). 8 random bytes make a CID unguessable enough that a
// spoofed one is dropped by record authentication anyway.
const CIDLength = 8

// Config configures the CoAPS listener. Zero fields take the defaults.
type Config struct {
	// Keys looks PSKs up (required).
	Keys *KeyCache
	// Limits bound handshakes (see LimitConfig).
	Limits LimitConfig
	// MaxSessions (COAPS_MAX_SESSIONS) bounds established sessions. When
	// it is reached, a new session takes the place of the one idle the
	// longest, if that one has been silent for EvictIdle at least
	// (counted as evicted); else new handshakes are refused. Each costs SessionBytes
	// (67 KiB at most), so it is capped to SessionsFor(MemoryLimit()): half the
	// memory (GOMEMLIMIT, else four fifths of the cgroup limit, else 512 MiB), 3912 on the
	// 512 MiB machine. Zero takes that cap. A larger value is lowered to it
	// with a warning: raise GOMEMLIMIT or the machine's memory instead.
	MaxSessions int
	// SessionIdle (COAPS_SESSION_IDLE_SECONDS, default 2 h) is how long a silent
	// session is kept. Longer than a typical heartbeat, so a device that
	// wakes behind a new NAT port resumes with its Connection ID (RFC 9146)
	// instead of a new handshake; shorter would cost handshakes, longer memory.
	SessionIdle time.Duration
	// HandshakeTimeout (default 20 s) ends a handshake that does not finish:
	// enough for NB-IoT round trips of a few seconds with pion's
	// retransmissions, short enough to free junk quickly.
	HandshakeTimeout time.Duration
	// MTU (default 1200) bounds the handshake records pion sends. NB-IoT
	// paths carry ~1300-byte datagrams (docs/pitfalls.md#fly); 1200 leaves room for IP/UDP
	// headers and tunnels.
	MTU int
	// Metrics (required) counts handshakes and refusals.
	Metrics *Metrics
	// Logger gets handshake failures and errors (default: discard).
	Logger *slog.Logger
	// Now is the clock of session activity (default time.Now; tests).
	Now func() time.Time
	// Drain bounds how long Stop waits for the uplinks being handled
	// (default ingest.DefaultLeanDrain, as the plain-CoAP path).
	Drain time.Duration
}

// EvictIdle is how long a session must have been silent for a new one to
// take its place at MaxSessions: sessions in use are never pushed out, so
// that a flood of devices cannot make them take turns.
const EvictIdle = time.Minute

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	limit, from := MemoryLimit()
	if fit := SessionsFor(limit); c.MaxSessions <= 0 || c.MaxSessions > fit {
		if c.MaxSessions > fit {
			c.Logger.Warn("COAPS_MAX_SESSIONS lowered to what fits in memory",
				"configured", c.MaxSessions, "max_sessions", fit, "memory_bytes", limit, "memory_from", from, "session_bytes", SessionBytes)
		}
		c.MaxSessions = fit
	}
	if c.SessionIdle <= 0 {
		c.SessionIdle = 2 * time.Hour
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 20 * time.Second
	}
	if c.MTU <= 0 {
		c.MTU = 1200
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Drain <= 0 {
		c.Drain = ingest.DefaultLeanDrain
	}
}

// Server is a bound CoAPS listener.
type Server struct {
	cfg   Config
	ln    *listener
	coap  *server.Server
	addr  *net.UDPAddr
	decoy *decoy
	logs  *rate.Limiter // debugf's budget, shared with the listener

	// Stop waits for the handler calls under way: go-coap's Stop does not.
	mu       sync.Mutex
	stopping bool            // Stop began: a handler call starting now is dropped
	calls    sync.WaitGroup  // Add only under mu while !stopping, so never during Wait
	ctx      context.Context // the handler calls' context; ends Drain after Stop began
	cancel   context.CancelFunc
	stopOnce sync.Once
}

const (
	logRate  = 1
	logBurst = 20
)

// Listen binds addr ("host:port") and prepares to serve h.
func Listen(addr string, h *ingest.Handler, cfg Config) (*Server, error) {
	cfg.defaults()
	if cfg.Keys == nil || cfg.Metrics == nil {
		return nil, errors.New("dtls: Keys and Metrics are required")
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("dtls: %w", err)
	}
	s := &Server{cfg: cfg, decoy: newDecoy(), logs: rate.NewLimiter(logRate, logBurst)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.ln = &listener{
		limits: NewLimiter(cfg.Limits), metrics: cfg.Metrics,
		log: cfg.Logger, maxSess: int64(cfg.MaxSessions), now: cfg.Now,
		reg: newRegistry(), keys: cfg.Keys, debugf: s.debugf,
		makeRoom: rate.NewLimiter(makeRoomRate, makeRoomRate/10),
	}
	m := cfg.Metrics
	d, err := newDemux(ua, demuxConfig{
		cidLen:      CIDLength,
		verified:    s.ln.verified,
		release:     s.ln.release,
		helloVerify: func(cookie string) { m.HelloVerify.WithLabelValues(cookie).Inc() },
		backlog:     func() { m.Refused.WithLabelValues(ErrBacklog.Error()).Inc() },
		replaced:    func() { m.SessionsClosed.WithLabelValues("rehello").Inc() },
		dropped:     func() { m.RequestsDropped.WithLabelValues("peer_queue").Inc() },
		overBudget:  func() { m.Refused.WithLabelValues(ErrHandshakeBytes.Error()).Inc() },
		discarded:   func(outcome string) { m.Datagrams.WithLabelValues(outcome).Inc() },
	})
	if err != nil {
		return nil, fmt.Errorf("dtls: listen: %w", err)
	}
	inner, err := piondtls.NewListenerWithOptions(d,
		piondtls.WithPSK(s.psk),
		piondtls.WithCipherSuites(CipherSuites...),
		piondtls.WithConnectionIDGenerator(piondtls.RandomCIDGenerator(CIDLength)),
		piondtls.WithExtendedMasterSecret(piondtls.RequestExtendedMasterSecret),
		piondtls.WithMTU(cfg.MTU),
		piondtls.WithLoggerFactory(discardPionLogs{}),
		// The demux sent the HelloVerifyRequest (statelessly) and admits
		// only a ClientHello that echoed its cookie.
		piondtls.WithInsecureSkipVerifyHello(true),
	)
	if err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("dtls: listen: %w", err)
	}
	s.ln.inner, s.ln.demux = inner, d
	if h.Metrics != nil {
		// go-coap's own 4.02s (listener.screen) are counted with the
		// handler's: over CoAPS every 4.02 is in this one series.
		s.ln.badOption = h.Metrics.Rejected("bad_option")
	}
	s.addr = d.Addr().(*net.UDPAddr)
	cfg.Keys.OnChange(s.closeIdentity)
	log := cfg.Logger
	s.coap = server.New(
		options.WithMux(s.track(secureHandler(h))),
		// go-coap passes it neither a malformed datagram nor a 4.02 it
		// sends itself: listener.screen counts those.
		options.WithErrors(func(err error) { log.Debug("coaps", "err", err) }),
		options.WithInactivityMonitor(cfg.SessionIdle, func(cc *udpClient.Conn) { _ = cc.Close() }),
		// Bounds go-coap's cache of the session's answers (MaxExchanges).
		options.WithRequestMonitor(s.ln.admitRequest),
		options.WithReceivedMessageQueueSize(16),
		// Block-wise off: an uplink fits one datagram, and block-wise would
		// let a peer make us buffer its payload.
		options.WithBlockwise(false, 0, 0),
		options.WithDTLSHandshakeTimeout(cfg.HandshakeTimeout),
	)
	return s, nil
}

// secureHandler serves h with the session's identity and refuses, with
// 4.03, a request on a session that somehow has none: without an identity
// ingest would let the payload name any device.
func secureHandler(h *ingest.Handler) mux.Handler {
	inner := h.Secure(Identity)
	return mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) {
		if Identity(w.Conn()) == "" {
			_ = w.SetResponse(codes.Forbidden, message.TextPlain, strings.NewReader("no DTLS identity"))
			return
		}
		inner.ServeCOAP(w, r)
	})
}

// track runs next for the calls Stop waits for. A call's context keeps the
// request's values but not its cancellation, which go-coap's Stop brings at
// once (a session's context is the server's): it ends Drain after Stop
// began, so an uplink being handled then still reaches the stream.
func (s *Server) track(next mux.Handler) mux.Handler {
	return mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) {
		s.mu.Lock()
		if s.stopping {
			// Its session is closed: no answer, the device retransmits.
			s.mu.Unlock()
			return
		}
		s.calls.Add(1)
		s.mu.Unlock()
		defer s.calls.Done()
		ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
		defer cancel()
		defer context.AfterFunc(s.ctx, cancel)()
		r.SetContext(ctx)
		next.ServeCOAP(w, r)
	})
}

// psk is pion's PSK callback. On a server its argument is the identity the
// client sent (pion calls it "hint"; docs/pitfalls.md#pion-dtls). It never fails: an identity
// with no usable key gets the decoy key, so an unknown identity, a lookup
// failure and a wrong key all end the same way for the peer (see decoy).
func (s *Server) psk(identity []byte) ([]byte, error) {
	id, err := ParseIdentity(identity)
	if err != nil {
		s.cfg.Metrics.KeyLookups.WithLabelValues("invalid_identity").Inc()
		s.debugf("dtls identity is not a device ID", "identity_len", len(identity))
		return s.decoy.key(identity), nil
	}
	key, err := s.cfg.Keys.PSK(contextBackground(), id)
	if err != nil {
		if !errors.Is(err, ErrUnknownDevice) {
			// Not the peer's doing: worth a warning, but bounded.
			if s.logs.Allow() {
				s.cfg.Logger.Warn("dtls PSK lookup failed", "device", id, "err", err)
			}
		}
		return s.decoy.key(identity), nil
	}
	return key, nil
}

// debugf logs at debug, at most logRate a second (bursts of logBurst):
// what a peer can trigger at will must not flood the log.
func (s *Server) debugf(msg string, args ...any) {
	if s.logs.Allow() {
		s.cfg.Logger.Debug(msg, args...)
	}
}

// closeIdentity ends the session of a device whose key was deleted or
// replaced (KeyCache.OnChange). A handshake of it not yet registered
// closes itself once it is (session.handshake).
func (s *Server) closeIdentity(id string) {
	if old := s.ln.reg.take(id); old != nil {
		old.revoke()
	}
}

// Serve serves until Stop. It returns nil after Stop.
func (s *Server) Serve() error {
	return s.coap.Serve(s.ln)
}

// Addr is the bound UDP address.
func (s *Server) Addr() *net.UDPAddr { return s.addr }

// Stop closes the listener and every session, then waits for the uplinks
// being handled, so that their live-log entries are sent before Shutdown
// flushes the stream (go-coap's Stop waits for none, docs/pitfalls.md#go-coap).
// Past Drain their context ends, so they stop waiting for the stream, and
// Stop waits for them to return. Their answers are dropped with the
// sessions, which is fine: the device retransmits its CON and storage is
// idempotent. Stop is idempotent.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		// Sessions are closed first: a call starting after stopping is set
		// finds its session closed, so go-coap sends nothing for it.
		s.coap.Stop()
		_ = s.ln.Close()
		for _, sess := range s.ln.reg.close() {
			_ = sess.Close()
		}
		s.mu.Lock()
		s.stopping = true
		s.mu.Unlock()
		drained := make(chan struct{})
		go func() { s.calls.Wait(); close(drained) }()
		select {
		case <-drained:
		case <-time.After(s.cfg.Drain):
			s.cancel() // stop waiting for the stream
			<-drained
		}
		s.cancel()
	})
}

// MaxSessions is the session bound in effect (Config.MaxSessions).
func (s *Server) MaxSessions() int { return s.cfg.MaxSessions }

// Peers is the number of peers the listener holds state for: admitted
// handshakes and sessions. A ClientHello without a valid cookie adds none.
func (s *Server) Peers() int { return s.ln.demux.peerCount() }

// InFlight is the number of handshakes under way, cookie returned (for
// tests and metrics).
func (s *Server) InFlight() int { return s.ln.limits.InFlight() }
