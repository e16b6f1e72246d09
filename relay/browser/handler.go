// Package browser serves GET /device-logs: it authenticates the browser,
// checks that the user may see the device, attaches the connection to the
// device's shared upstream link and runs it with internal/wspeer (bounded
// queue, ping/pong, read limit, slow-client disconnect).
package browser

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/auth"
	"github.com/nbiot-live/nbiot-live/relay/upstream"
)

// Verifier verifies a user's access token (*auth.Verifier).
type Verifier interface {
	Verify(ctx context.Context, token string) (*auth.Claims, error)
}

// DefaultMaxConnections bounds browser connections: each costs two
// goroutines, a queue and a socket (about 10 KiB, see the benchmark).
const DefaultMaxConnections = 20000

// DefaultQueueSize bounds frames waiting for one browser. 64 instead of
// wspeer's 256: a device sends a few frames a minute, so 64 is still a
// long burst, and each of thousands of idle browsers holds 1.5 KiB less.
const DefaultQueueSize = 64

// DefaultQueueBytes bounds in bytes (wspeer.FrameCost) the live frames
// waiting for one browser: 64 KiB, some 80 entries of a few hundred
// bytes. A start's history adds its own bound (upstream.Backlog); every
// browser's queue together is bounded by the Peer config's Budget.
const DefaultQueueBytes = 64 << 10

// Handler serves /device-logs. Set the fields, then call ServeHTTP.
type Handler struct {
	// Verifier and Access authenticate and authorize; both nil only with
	// AuthDisabled.
	Verifier     Verifier
	Access       access.Checker
	AuthDisabled bool
	Upstreams    *upstream.Manager
	Origins      Origins
	Peer         wspeer.Config
	// MaxConnections bounds open browser connections. Default DefaultMaxConnections.
	MaxConnections int
	// CheckTimeout bounds token verification plus the access check.
	// Default 5 s.
	CheckTimeout time.Duration
	// FirstConnectWait bounds how long the first watcher of a device waits
	// for its upstream before the handshake is answered. Default 5 s.
	FirstConnectWait time.Duration
	// Quotas bound each user and client address (defaults: Quotas).
	Quotas Quotas
	// TrustedProxyHeader (TRUSTED_PROXY_HEADER) names the header holding
	// the client address, set by the proxy in front (ClientIP); "" uses
	// the connection's peer address.
	TrustedProxyHeader string
	// RecheckEvery is how often RunRechecks asks open sessions' access
	// again. Default DefaultRecheckEvery.
	RecheckEvery time.Duration
	Logger       *slog.Logger
	Metrics      *Metrics
	// Now and AfterFunc are the clock for token expiry (default time.Now
	// and time.AfterFunc), injected so tests need not wait.
	Now       func() time.Time
	AfterFunc func(time.Duration, func()) interface{ Stop() bool }

	initOnce sync.Once
	upgrader websocket.Upgrader
	conns    wspeer.Registry
	mu       sync.Mutex                       // guards sessions
	sessions map[string]map[*session]struct{} // by pairKey
	quota    *quota
}

func (h *Handler) init() {
	h.initOnce.Do(func() {
		h.sessions = make(map[string]map[*session]struct{})
		now := h.Now
		if now == nil {
			now = time.Now
		}
		h.quota = newQuota(h.Quotas, now)
		if h.RecheckEvery <= 0 {
			h.RecheckEvery = DefaultRecheckEvery
		}
		if h.MaxConnections <= 0 {
			h.MaxConnections = DefaultMaxConnections
		}
		if h.CheckTimeout <= 0 {
			h.CheckTimeout = 5 * time.Second
		}
		if h.Peer.QueueSize <= 0 {
			h.Peer.QueueSize = DefaultQueueSize
		}
		if h.Peer.QueueBytes <= 0 {
			h.Peer.QueueBytes = DefaultQueueBytes
		}
		if h.FirstConnectWait <= 0 {
			h.FirstConnectWait = 5 * time.Second
		}
		h.upgrader = websocket.Upgrader{
			// Browsers only send control frames: a small read buffer of
			// our own (the HTTP server's 4 KiB one is released), and
			// pooled write buffers, so an idle connection holds no write
			// buffer at all.
			ReadBufferSize:  512,
			WriteBufferPool: &sync.Pool{},
			// Only the non-secret protocol is ever echoed (auth.Subprotocol).
			Subprotocols: []string{auth.Subprotocol},
			// Origins are checked before any work, in ServeHTTP.
			CheckOrigin: func(*http.Request) bool { return true },
		}
	})
}

// ServeHTTP implements http.Handler. The order of checks puts the cheap
// ones first; nothing here logs the request URL, which may hold a token.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.init()
	if !h.Origins.Allowed(r) {
		h.reject(w, RejectOrigin, http.StatusForbidden, "origin not allowed (ALLOWED_ORIGINS)")
		return
	}
	device := r.URL.Query().Get("deviceId")
	if !livelog.ValidDeviceID(device) {
		h.reject(w, RejectDeviceID, http.StatusBadRequest, "invalid deviceId: must match ^[A-Za-z0-9_-]{1,64}$")
		return
	}
	from, err := ParseResume(r.URL.Query())
	if err != nil {
		h.reject(w, RejectResume, http.StatusBadRequest, err.Error())
		return
	}
	ip := ClientIP(r, h.TrustedProxyHeader)
	var (
		claims *auth.Claims
		token  string
	)
	if !h.AuthDisabled {
		var refused *refusal
		if claims, token, refused = h.authenticate(r, device); refused != nil {
			if refused.status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="nbiot-live", error="invalid_token"`)
			}
			h.refuse(w, refused)
			return
		}
	}
	user := ""
	if claims != nil {
		user = claims.Subject
	}
	// The quota is held from here until the connection ends: a user at
	// its cap costs no access check.
	if reason := h.quota.acquire(user, ip, device); reason != "" {
		h.Logger.Debug("quota reached", "remote", r.RemoteAddr, "device", device, "reason", reason)
		h.reject(w, reason, http.StatusTooManyRequests, "too many connections or devices for this user or address")
		return
	}
	if claims != nil {
		if refused := h.authorize(r, claims, token, user, ip, device); refused != nil {
			h.quota.release(user, ip, device)
			if refused.status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			h.refuse(w, refused)
			return
		}
	}
	// A plain GET (no upgrade) learns only what the checks above say: the
	// page reads a refused WebSocket's 401 or 403 that way, which the
	// browser hides. It must not start the device's upstream (a since=0
	// one replaying the whole history) only to fail at the upgrade, as
	// often as a client likes.
	if !websocket.IsWebSocketUpgrade(r) {
		h.quota.release(user, ip, device)
		h.reject(w, RejectUpgrade, http.StatusBadRequest, "not a WebSocket upgrade: nothing refused this request")
		return
	}
	if !h.conns.Reserve(h.MaxConnections) {
		h.quota.release(user, ip, device)
		h.reject(w, RejectLimit, http.StatusServiceUnavailable, "too many connections")
		return
	}
	var sess *session
	if claims != nil {
		sess = &session{claims: claims, token: token, device: device}
	}
	// serve releases the reservation and the quota when the connection ends.
	h.serve(w, r, device, from, sess, func() { h.quota.release(user, ip, device) })
}

// AllowQuery spends one of the access-check budgets (Quotas: the user's
// and the client address's, ACCESS_CHECKS_PER_MINUTE_PER_USER and _PER_IP)
// on a database query made for user outside /device-logs (GET /devices);
// false when either is spent. Both kinds of query share the relay's few
// database connections, so one user's flood of either delays everyone's
// access checks.
func (h *Handler) AllowQuery(r *http.Request, user string) bool {
	h.init()
	return h.quota.allowQuery(user, ClientIP(r, h.TrustedProxyHeader))
}

// refusal is why a request is answered with an HTTP error instead of an
// upgrade: the status, the reason label of nbiot_relay_rejected_total and a
// message without secrets.
type refusal struct {
	status int
	reason string
	msg    string
}

// invalidToken is the refusal of a missing, malformed or unverified token.
var invalidToken = &refusal{http.StatusUnauthorized, RejectAuth, "missing or invalid token"}

// authenticate returns the verified claims and the token when the request
// carries a valid one, else why it is refused.
func (h *Handler) authenticate(r *http.Request, device string) (claims *auth.Claims, token string, refused *refusal) {
	token, source, err := auth.FromRequest(r)
	if err != nil {
		h.Metrics.AuthFailures.WithLabelValues(auth.Reason(err)).Inc()
		return nil, "", invalidToken
	}
	if source == auth.SourceSubprotocol && !auth.OffersSubprotocol(r) {
		// A browser fails a handshake whose answer names no protocol it
		// offered, and the token entry itself must never be echoed.
		return nil, "", &refusal{http.StatusBadRequest, RejectProtocol, `offer the "nbiot-live" subprotocol with the token entry`}
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.CheckTimeout)
	defer cancel()
	claims, err = h.Verifier.Verify(ctx, token)
	if err != nil {
		reason := auth.Reason(err)
		h.Metrics.AuthFailures.WithLabelValues(reason).Inc()
		h.Logger.Debug("token rejected", "remote", r.RemoteAddr, "device", device, "reason", reason)
		return nil, "", invalidToken
	}
	h.Metrics.TokenSources.WithLabelValues(source).Inc()
	return claims, token, nil
}

// Gated is an access checker that spends a caller's budget only on cache
// misses (*access.Cached).
type Gated interface {
	CheckGated(ctx context.Context, c *auth.Claims, token, deviceID string, allow func() bool) error
}

// authorize checks that the user may see the device, spending the user's
// and the address's budget of uncached checks; nil when allowed.
func (h *Handler) authorize(r *http.Request, claims *auth.Claims, token, user, ip, device string) *refusal {
	ctx, cancel := context.WithTimeout(r.Context(), h.CheckTimeout)
	defer cancel()
	var err error
	if g, ok := h.Access.(Gated); ok {
		err = g.CheckGated(ctx, claims, token, device, func() bool { return h.quota.allowCheck(user, ip) })
	} else {
		err = h.Access.Check(ctx, claims, token, device)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, access.ErrDenied):
		return &refusal{http.StatusForbidden, RejectDenied, "device not visible to this user"}
	case errors.Is(err, access.ErrTokenRefused):
		h.Metrics.AuthFailures.WithLabelValues("database").Inc()
		return invalidToken
	case errors.Is(err, access.ErrLimited):
		h.Logger.Debug("access check budget spent", "remote", r.RemoteAddr, "device", device)
		return &refusal{http.StatusTooManyRequests, RejectCheckRate, "too many access checks for new devices, retry later"}
	default:
		h.Logger.Warn("access check failed", "remote", r.RemoteAddr, "device", device, "err", err)
		return &refusal{http.StatusServiceUnavailable, RejectUnavailable, "access check unavailable, retry later"}
	}
}

// TokenExpired closes a browser's session when its token expires: close
// code 4401 mirrors HTTP 401, and a client that can refresh its token
// reconnects with a new one, which is verified and checked again.
var TokenExpired = &wspeer.CloseError{Code: 4401, Text: "token expired"}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request, device string, from upstream.Resume, sess *session, releaseQuota func()) {
	// The peer queues frames from the moment it watches; its first frames
	// are written once the handshake is done. Its queue also holds the
	// entries of its since/tail start, which are queued before it can
	// write anything (at most upstream.MaxTail of them).
	var peer *wspeer.Peer
	watch, err := h.Upstreams.WatchFrom(device, from, func(b upstream.Backlog) upstream.Sender {
		cfg := h.Peer
		cfg.QueueSize += b.Frames
		cfg.QueueBytes += b.Bytes
		peer = wspeer.New(cfg)
		return peer
	})
	if err != nil {
		h.conns.Release()
		releaseQuota()
		// ErrTooManyDevices, or ErrClosed during shutdown.
		h.reject(w, RejectLimit, http.StatusServiceUnavailable, "relay busy (too many watched devices) or shutting down")
		return
	}
	// The first watcher of a device waits for the upstream subscription,
	// so that no uplink sent after this browser's handshake is lost.
	wctx, cancel := context.WithTimeout(r.Context(), h.FirstConnectWait)
	watch.WaitFirstAttempt(wctx)
	cancel()
	// Counted before the upgrade answers the browser, and until its
	// quota and slot are given back: a client that saw its connection
	// open, then the gauge at 0, may open another.
	h.Metrics.Connections.Inc()
	conn, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		watch.Close()
		peer.Close(wspeer.ErrClosed) // gives back what its queue held
		h.conns.Release()
		releaseQuota()
		h.Metrics.Connections.Dec()
		return // Upgrade has answered the client.
	}
	h.conns.Track(peer)
	stopExpiry := func() bool { return false }
	if sess != nil {
		sess.peer = peer
		h.addSession(sess) // re-checked by RunRechecks while open
		if exp := sess.claims.ValidUntil; !exp.IsZero() {
			// Authorization holds for the token's lifetime, not the socket's.
			stopExpiry = h.afterFunc(h.until(exp), func() { peer.Close(TokenExpired) }).Stop
		}
	}
	h.Metrics.Accepted.Inc()
	remote := r.RemoteAddr
	h.Logger.Debug("browser connected", "remote", remote, "device", device)
	// The connection runs on its own goroutine and ServeHTTP returns: the
	// HTTP server then drops its per-request state (buffers, request,
	// a stack grown by the handshake), about 10 KiB per idle browser.
	go func() {
		defer h.Metrics.Connections.Dec() // deferred first, so run last
		defer h.conns.Release()
		defer releaseQuota()
		defer h.conns.Untrack(peer)
		if sess != nil {
			defer h.removeSession(sess)
		}
		defer watch.Close()
		defer stopExpiry()
		reason := peer.Run(conn)
		h.Metrics.Disconnects.WithLabelValues(disconnectReason(reason)).Inc()
		h.Logger.Debug("browser gone", "remote", remote, "device", device, "err", reason)
	}()
}

func (h *Handler) until(t time.Time) time.Duration {
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	return t.Sub(now())
}

func (h *Handler) afterFunc(d time.Duration, f func()) interface{ Stop() bool } {
	if h.AfterFunc != nil {
		return h.AfterFunc(d, f)
	}
	return time.AfterFunc(d, f)
}

func disconnectReason(err error) string {
	switch {
	case errors.Is(err, wspeer.ErrSlow):
		return "slow"
	case errors.Is(err, wspeer.ErrBudget):
		return "memory"
	case errors.Is(err, wspeer.ErrClosed):
		return "server"
	case errors.Is(err, TokenExpired):
		return "token_expired"
	case errors.Is(err, AccessRevoked):
		return "revoked"
	default:
		return "gone"
	}
}

func (h *Handler) reject(w http.ResponseWriter, reason string, status int, msg string) {
	h.Metrics.Rejected.WithLabelValues(reason).Inc()
	http.Error(w, msg, status)
}

func (h *Handler) refuse(w http.ResponseWriter, r *refusal) { h.reject(w, r.reason, r.status, r.msg) }

// CloseAll disconnects every browser with a going-away close frame and
// waits for their handlers to return. It is idempotent.
func (h *Handler) CloseAll() {
	h.init()
	h.conns.CloseAll()
}
