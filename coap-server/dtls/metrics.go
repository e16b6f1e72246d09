package dtls

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the CoAPS listener does. Handshakes is exported so
// tests can check that a Connection ID kept a session without a new one.
type Metrics struct {
	// Handshakes counts finished handshakes by result: ok, failed.
	Handshakes *prometheus.CounterVec
	// Refused counts connection attempts refused before any handshake work,
	// by reason: per_ip_inflight, per_ip_rate, inflight, table_full, sessions.
	Refused *prometheus.CounterVec
	// KeyLookups counts PSK lookups by outcome: hit, miss_cached, loaded,
	// unknown, error, busy, invalid_identity.
	KeyLookups *prometheus.CounterVec
	// KeyCacheEvictions counts keys dropped because the cache was full.
	KeyCacheEvictions prometheus.Counter
	// Sessions is the number of established sessions.
	Sessions prometheus.Gauge
	// HandshakesInFlight is the number of handshakes under way.
	HandshakesInFlight prometheus.Gauge
}

// NewMetrics registers the CoAPS metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_dtls_handshakes_total", Help: "DTLS handshakes finished, by result (ok, failed).",
		}, []string{"result"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_dtls_refused_total",
			Help: "DTLS connection attempts refused before the handshake, by reason (per_ip_inflight, per_ip_rate, inflight, table_full, sessions).",
		}, []string{"reason"}),
		KeyLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_dtls_key_lookups_total",
			Help: "PSK lookups by outcome (hit, miss_cached, loaded, unknown, error, busy, invalid_identity).",
		}, []string{"outcome"}),
		KeyCacheEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_dtls_key_cache_evictions_total", Help: "PSK cache entries evicted because the cache was full.",
		}),
		Sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_dtls_sessions", Help: "Established DTLS sessions.",
		}),
		HandshakesInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_dtls_handshakes_in_flight", Help: "DTLS handshakes under way.",
		}),
	}
	reg.MustRegister(m.Handshakes, m.Refused, m.KeyLookups, m.KeyCacheEvictions, m.Sessions, m.HandshakesInFlight)
	return m
}
