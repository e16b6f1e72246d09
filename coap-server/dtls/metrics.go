package dtls

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the CoAPS listener does. Handshakes is exported so
// tests can check that a Connection ID kept a session without a new one.
type Metrics struct {
	// Handshakes counts finished handshakes by result: ok, failed.
	Handshakes *prometheus.CounterVec
	// Refused counts connection attempts refused before any handshake work,
	// by reason: per_ip_inflight, per_ip_rate, inflight, table_full, sessions,
	// backlog; and handshake_bytes, a handshake ended because the peer sent
	// more than HandshakeBytes; inflight_evicted, a handshake ended to make
	// room for one from an address holding fewer (Limiter.Heaviest).
	Refused *prometheus.CounterVec
	// KeyLookups counts PSK lookups by outcome: hit, miss_cached, loaded,
	// unknown, error, busy, busy_unlisted, stale, invalid_identity.
	KeyLookups *prometheus.CounterVec
	// KeyCacheEvictions counts keys dropped because the cache was full.
	KeyCacheEvictions prometheus.Counter
	// NegativeEvictions counts unknown identities forgotten because their
	// table was full.
	NegativeEvictions prometheus.Counter
	// KeyChanges counts credentials seen to change by Refresh: deleted,
	// replaced.
	KeyChanges *prometheus.CounterVec
	// SessionsClosed counts sessions the server ended itself, by reason:
	// replaced (a newer handshake by the same identity), rehello (a new
	// ClientHello with a valid cookie from the session's address: the
	// device rebooted), revoked (the key was deleted or replaced), evicted
	// (the one idle the longest, for a new session at MaxSessions).
	SessionsClosed *prometheus.CounterVec
	// RequestsDropped counts datagrams of established sessions dropped, by
	// reason: exchanges (past MaxExchanges), peer_queue (past
	// PeerQueueBytes waiting to be read).
	RequestsDropped *prometheus.CounterVec
	// HelloVerify counts the stateless HelloVerifyRequests sent, by the
	// cookie the ClientHello carried: none, invalid (wrong or expired).
	HelloVerify *prometheus.CounterVec
	// Datagrams counts datagrams not handed to the uplink logic that no
	// other family counts, by outcome (as nbiot_coap_datagrams_total does
	// for plain CoAP): no_session, not a ClientHello, from an address or
	// Connection ID with no peer; read_error, a failed read of the socket;
	// malformed, a session's record that is not a CoAP message (go-coap
	// drops it, answering a CON whose header it read with RST).
	Datagrams *prometheus.CounterVec
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
			Help: "DTLS connection attempts refused before the handshake, by reason (per_ip_inflight, per_ip_rate, inflight, table_full, sessions, backlog), and handshakes ended because the peer sent more than 16 KiB before completing one (handshake_bytes) or to make room for an address holding fewer (inflight_evicted).",
		}, []string{"reason"}),
		KeyLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_dtls_key_lookups_total",
			Help: "PSK lookups by outcome (hit, miss_cached, loaded, unknown, error, busy, busy_unlisted, stale, invalid_identity).",
		}, []string{"outcome"}),
		KeyCacheEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_dtls_key_cache_evictions_total", Help: "PSK cache entries evicted because the cache was full.",
		}),
		NegativeEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_dtls_unknown_identity_evictions_total", Help: "Unknown PSK identities forgotten because their table was full.",
		}),
		KeyChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_dtls_key_changes_total", Help: "Cached DTLS credentials found changed in the database, by change (deleted, replaced).",
		}, []string{"change"}),
		SessionsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_dtls_sessions_closed_total", Help: "DTLS sessions closed by the server, by reason (replaced, rehello, revoked, evicted).",
		}, []string{"reason"}),
		RequestsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_dtls_requests_dropped_total", Help: "DTLS datagrams dropped by a bound, by reason (exchanges: past MaxExchanges new message IDs within 252 s; peer_queue: past PeerQueueBytes waiting to be read).",
		}, []string{"reason"}),
		HelloVerify: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_dtls_hello_verify_total",
			Help: "Stateless DTLS HelloVerifyRequests sent, by the cookie the ClientHello carried (none, invalid).",
		}, []string{"cookie"}),
		Datagrams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_dtls_datagrams_total",
			Help: "CoAPS datagrams not handed to the uplink logic, by outcome: no_session (not a ClientHello, from an address or Connection ID with no DTLS peer), read_error (the socket read failed), malformed (a session's record that is not a CoAP message: dropped, with an RST if it is a CON whose header could be read).",
		}, []string{"outcome"}),
		Sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_dtls_sessions", Help: "Established DTLS sessions.",
		}),
		HandshakesInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_dtls_handshakes_in_flight", Help: "DTLS handshakes under way.",
		}),
	}
	reg.MustRegister(m.Handshakes, m.Refused, m.KeyLookups, m.KeyCacheEvictions, m.NegativeEvictions, m.KeyChanges, m.SessionsClosed, m.RequestsDropped, m.HelloVerify, m.Datagrams, m.Sessions, m.HandshakesInFlight)
	return m
}
