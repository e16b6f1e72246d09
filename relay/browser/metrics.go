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
	RejectResume      = "since_tail" // since/tail not a number, negative, tail too large, or both
)

// Metrics counts browser connections.
type Metrics struct {
	Connections  prometheus.Gauge
	Accepted     prometheus.Counter
	Rejected     *prometheus.CounterVec
	AuthFailures *prometheus.CounterVec
	TokenSources *prometheus.CounterVec
	Disconnects  *prometheus.CounterVec
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
			Name: "nbiot_relay_auth_failures_total", Help: "Token failures, by reason (missing, malformed, expired, signature, claims).",
		}, []string{"reason"}),
		TokenSources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_token_source_total", Help: "Verified tokens by where they came from (header, subprotocol, query).",
		}, []string{"source"}),
		Disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_disconnects_total", Help: "Browser connections ended, by reason (slow, gone, server).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.Connections, m.Accepted, m.Rejected, m.AuthFailures, m.TokenSources, m.Disconnects)
	return m
}
