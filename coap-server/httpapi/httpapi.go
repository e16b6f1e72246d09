// Package httpapi is coap-server's HTTP side: the live-log WebSocket /ws for
// the relay (and any trusted consumer holding WS_TOKEN), the health
// endpoints for the platform, and /metrics for a listener of its own
// (METRICS_ADDR), never the public one.
package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

// Defaults of Server's limits.
const (
	// DefaultMaxSubscribers bounds /ws connections: each holds a goroutine
	// pair and a queue; the relay needs one per watched device.
	DefaultMaxSubscribers = 10000
	// MaxDevicesPerSubscriber bounds the repeatable deviceId parameter.
	MaxDevicesPerSubscriber = 100
)

// Server serves /ws, /healthz and /readyz.
type Server struct {
	Hub     *hub.Hub
	Feed    *hub.Feeder // held per subscriber: the hub is fed while someone watches; nil = always fed
	History History     // the retained live log, for since and tail
	Token   string      // WS_TOKEN; compared in constant time
	// PreviousToken (WS_TOKEN_PREVIOUS), when set, is accepted too, while
	// the subscribers move to Token (a rotation without downtime); each
	// use is counted (Metrics.PreviousToken).
	PreviousToken  string
	Ready          func() bool
	Gatherer       prometheus.Gatherer // not served here: see MetricsHandler
	Metrics        *Metrics            // refusals (NewMetrics); nil = not counted
	Logger         *slog.Logger
	Peer           wspeer.Config
	MaxSubscribers int // default DefaultMaxSubscribers

	upgrader websocket.Upgrader
	conns    wspeer.Registry
}

// DefaultQueueBytes bounds in bytes (wspeer.FrameCost) the frames waiting
// for one subscriber: 1 MiB, wspeer's 256 frames of 4 KiB (an uplink at
// MAX_UPLINK_BYTES' default makes an entry of a few hundred bytes to a few
// KiB; the largest the stream takes, stream.MaxEntryBytes, fits 16 times).
// A subscriber's history is paced by it (SendWait); the Peer config's
// Budget bounds every subscriber's together.
const DefaultQueueBytes = 1 << 20

// Handler returns the HTTP routes.
func (s *Server) Handler() http.Handler {
	// CheckOrigin stays nil (same origin, or no Origin header): /ws is for
	// servers holding the token, not for browsers, which use the relay.
	s.upgrader = websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 4096}
	if s.Peer.QueueBytes <= 0 {
		s.Peer.QueueBytes = DefaultQueueBytes
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.serveWS)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.Ready != nil && !s.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// MetricsHandler serves GET /metrics from g, for the metrics listener.
func MetricsHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	ok, previous := s.authorized(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="nbiot-live"`)
		s.reject(w, RejectUnauthorized, http.StatusUnauthorized, "missing or invalid bearer token")
		return
	}
	if previous && s.Metrics != nil {
		s.Metrics.PreviousToken.Inc()
	}
	devices := r.URL.Query()["deviceId"]
	if len(devices) > MaxDevicesPerSubscriber {
		s.reject(w, RejectBadRequest, http.StatusBadRequest, "too many deviceId parameters")
		return
	}
	for _, d := range devices {
		if !livelog.ValidDeviceID(d) {
			s.reject(w, RejectBadRequest, http.StatusBadRequest, "invalid deviceId: must match ^[A-Za-z0-9_-]{1,64}$")
			return
		}
	}
	devices = distinct(devices) // a device named twice is watched once
	st, err := parseStart(r.URL.Query())
	if err != nil {
		s.reject(w, RejectBadRequest, http.StatusBadRequest, err.Error())
		return
	}
	limit := s.MaxSubscribers
	if limit <= 0 {
		limit = DefaultMaxSubscribers
	}
	if !s.conns.Reserve(limit) {
		s.Logger.Warn("ws subscriber refused: limit reached", "remote", r.RemoteAddr)
		s.reject(w, RejectBusy, http.StatusServiceUnavailable, "too many subscribers")
		return
	}
	defer s.conns.Release()
	// Subscribe before the 101 goes out: every frame published after the
	// client sees the handshake complete reaches it.
	// With since or tail, live frames are held while the history is sent.
	// The feed first: it carries every entry stored from here on, so the
	// position the history reads next leaves no gap.
	if s.Feed != nil {
		release, err := s.Feed.Hold(r.Context())
		if err != nil {
			s.Logger.Warn("ws subscriber refused: the live-log feed cannot start", "err", err)
			s.reject(w, RejectUnavailable, http.StatusServiceUnavailable, "live log unavailable, retry later")
			return
		}
		defer release()
	}
	if st.history() || st.position {
		// Where the stream is before the subscription: a tail counts back
		// from here, and everything after it comes too (read from the
		// stream up to where the hub takes over), so that no entry
		// published once the subscriber is in is left out. Live and told
		// its position, a subscriber starts here.
		pos, err := s.History.LivePosition(r.Context())
		if err != nil {
			s.Logger.Warn("ws subscriber refused: the live log is unreachable", "err", err)
			s.reject(w, RejectUnavailable, http.StatusServiceUnavailable, "live log unavailable, retry later")
			return
		}
		st.at = pos.Last
		if !st.history() {
			st.since, st.fresh = int64(pos.Last), true
		}
	}
	peer := wspeer.New(s.Peer)
	g := &gate{peer: peer, notices: st.notices, live: !st.history()}
	sub := s.Hub.Subscribe(g, devices)
	defer sub.Close()
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		peer.Close(wspeer.ErrClosed) // what it queued meanwhile is given back
		s.rejected(RejectUpgrade)
		return // Upgrade has answered the client.
	}
	s.conns.Track(peer)
	s.Logger.Debug("ws subscriber connected", "remote", r.RemoteAddr, "devices", len(devices))
	// The history is sent on a goroutine of its own, ended with the peer
	// and waited for: the handler, and so CloseSubscribers, returns only
	// once nothing reads the live log for this subscriber any more (the
	// stream is closed after it).
	var history sync.WaitGroup
	defer history.Wait()
	if st.history() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		history.Go(func() {
			select {
			case <-peer.Done():
				cancel()
			case <-ctx.Done():
			}
		})
		history.Go(func() { s.catchUp(ctx, g, devices, st) })
	}
	reason := peer.Run(conn)
	sub.Close()
	s.conns.Untrack(peer)
	s.Logger.Debug("ws subscriber gone", "remote", r.RemoteAddr, "err", reason)
}

// authorized compares the bearer token with Token and PreviousToken, both
// in constant time whichever matches; hashing first keeps the comparison
// independent of the length of either token. previous says the token was
// PreviousToken.
func (s *Server) authorized(r *http.Request) (ok, previous bool) {
	h := r.Header.Get("Authorization")
	const prefix = "bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) || s.Token == "" {
		return false, false
	}
	got := sha256.Sum256([]byte(h[len(prefix):]))
	want := sha256.Sum256([]byte(s.Token))
	old := sha256.Sum256([]byte(s.PreviousToken))
	current := subtle.ConstantTimeCompare(got[:], want[:]) == 1
	previous = subtle.ConstantTimeCompare(got[:], old[:]) == 1 && s.PreviousToken != ""
	return current || previous, previous && !current
}

// CloseSubscribers disconnects every subscriber with a going-away close
// frame and waits for their handlers to return. It is idempotent.
func (s *Server) CloseSubscribers() { s.conns.CloseAll() }

// distinct returns ids without repeats, in their first order.
func distinct(ids []string) []string {
	out := ids[:0:0]
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}
