package browser

import "github.com/prometheus/client_golang/prometheus"

// Rejection reasons (label values of Metrics.Rejected).
const (
	RejectOrigin      = "origin"
	RejectDeviceID    = "device_id"
	RejectAuth        = "auth"
	RejectDenied      = "denied"
	RejectUnavailable = "unavailable"
	RejectLimit       = "limit"
	RejectProtocol    = "subprotocol"
	RejectUpgrade     = "not_websocket" // no WebSocket upgrade asked for
	RejectResume      = "since_tail"    // since/tail not a number, negative, tail too large, or both
	// 429s (Quotas): one user's or one address's connections or devices,
	// or its budget of uncached access checks.
	RejectUserLimit = "user_limit"
	RejectIPLimit   = "ip_limit"
	RejectCheckRate = "check_rate"
)

// Metrics counts browser connections.
type Metrics struct {
	Connections  prometheus.Gauge
	Accepted     prometheus.Counter
	Rejected     *prometheus.CounterVec
	AuthFailures *prometheus.CounterVec
	TokenSources *prometheus.CounterVec
	Disconnects  *prometheus.CounterVec
	// Revoked counts open sessions ended because a re-check found the
	// device no longer visible to the user (close code 4403).
	Revoked prometheus.Counter
	// Rechecks counts re-checks of open sessions' access, by result
	// (allowed, denied, error: an error keeps the sessions open).
	Rechecks *prometheus.CounterVec
}

// NewMetrics registers the browser metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_relay_connections", Help: "Browser WebSocket connections open on /device-logs.",
		}),
		Accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_connections_total", Help: "Browser WebSocket connections accepted.",
		}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_rejected_total", Help: "/device-logs requests refused, by reason.",
		}, []string{"reason"}),
		AuthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_auth_failures_total", Help: "Token failures, by reason (missing, malformed, expired, signature, claims; database: accepted here, refused by Supabase REST).",
		}, []string{"reason"}),
		TokenSources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_token_source_total", Help: "Verified tokens by where they came from (header, subprotocol, query).",
		}, []string{"source"}),
		Disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_disconnects_total", Help: "Browser connections ended, by reason (slow, memory: RELAY_QUEUE_BYTES reached, gone, server, token_expired, revoked).",
		}, []string{"reason"}),
		Revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_sessions_revoked_total", Help: "Open browser sessions ended because the user lost access to the device (close 4403).",
		}),
		Rechecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_access_rechecks_total", Help: "Re-checks of open sessions' device access, by result (allowed, denied, error).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.Connections, m.Accepted, m.Rejected, m.AuthFailures, m.TokenSources, m.Disconnects, m.Revoked, m.Rechecks)
	return m
}
