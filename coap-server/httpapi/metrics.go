package httpapi

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
)

// Rejection reasons (label values of Metrics.Rejected): short and stable,
// for alerts. A burst of unauthorized is someone guessing WS_TOKEN.
const (
	RejectUnauthorized = "unauthorized" // 401: WS_TOKEN missing or wrong
	RejectBadRequest   = "bad_request"  // 400: deviceId (too many, invalid), since or tail
	RejectBusy         = "busy"         // 503: MaxSubscribers reached
	RejectUnavailable  = "unavailable"  // 503: the feed cannot start, or the live log is unreachable
	RejectUpgrade      = "upgrade"      // the WebSocket handshake failed (Upgrade answered)
)

// Metrics counts what /ws refuses.
type Metrics struct {
	Rejected      *prometheus.CounterVec
	PreviousToken prometheus.Counter // subscribers let in with WS_TOKEN_PREVIOUS
}

// NewMetrics registers the /ws metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_ws_rejected_total", Help: "/ws requests refused, by reason (unauthorized, bad_request, busy, unavailable, upgrade).",
		}, []string{"reason"}),
		PreviousToken: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_ws_previous_token_total", Help: "/ws subscribers let in with WS_TOKEN_PREVIOUS: once it stops growing, every subscriber uses WS_TOKEN and WS_TOKEN_PREVIOUS can go.",
		}),
	}
	reg.MustRegister(m.Rejected, m.PreviousToken)
	return m
}

// rejected counts a refusal; without Metrics (a test's server) nothing is
// counted.
func (s *Server) rejected(reason string) {
	if s.Metrics != nil {
		s.Metrics.Rejected.WithLabelValues(reason).Inc()
	}
}

// reject counts a refusal, then answers it.
func (s *Server) reject(w http.ResponseWriter, reason string, status int, msg string) {
	s.rejected(reason)
	http.Error(w, msg, status)
}
