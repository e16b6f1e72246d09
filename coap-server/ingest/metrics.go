package ingest

import (
	"fmt"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts what the CoAP side does.
type Metrics struct {
	Accepted prometheus.Counter
	// Duplicates counts retransmissions answered from Dedup; DedupEvictions
	// counts answers forgotten early because Dedup was full.
	Duplicates     prometheus.Counter
	DedupEvictions prometheus.Counter
	// EntriesFailed counts accepted uplinks whose live-log entry the
	// stream refused (when it was waited for: sent again without
	// waiting).
	EntriesFailed prometheus.Counter
	requests      *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	latency       prometheus.Histogram
}

// NewMetrics registers the CoAP metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_uplinks_accepted_total", Help: "Uplinks accepted (answered 2.04).",
		}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_uplinks_duplicate_total", Help: "Retransmitted uplinks answered again without being processed twice.",
		}),
		DedupEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_dedup_evictions_total", Help: "Remembered answers dropped before EXCHANGE_LIFETIME because the table was full.",
		}),
		EntriesFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_livelog_entries_failed_total", Help: "Accepted (durable) uplinks whose live-log entry the stream refused (an entry that was waited for is sent once more without waiting). Entries that fail after the answer are in nbiot_livelog_async_failed_total.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_coap_requests_total", Help: "CoAP requests by response code.",
		}, []string{"code"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_uplinks_rejected_total",
			Help: "Uplinks refused, by reason: undecodable, device_id, invalid, identity, unauthorized, unregistered, too_large, content_format, proxy, precondition, accept, bad_option (CoAPS; plain CoAP counts it in nbiot_coap_datagrams_total), stream_full, dedup_full, stream_devices, stream_unavailable, credentials_unknown, registered_unknown.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nbiot_coap_handle_seconds",
			Help:    "Time from handler entry to response set.",
			Buckets: []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3},
		}),
	}
	reg.MustRegister(m.Accepted, m.Duplicates, m.DedupEvictions, m.EntriesFailed, m.requests, m.rejected, m.latency)
	return m
}

func (m *Metrics) observe(code codes.Code, d time.Duration) {
	m.requests.WithLabelValues(dotted[uint8(code)]).Inc()
	m.latency.Observe(d.Seconds())
}

func (m *Metrics) reject(reason string) {
	m.rejected.WithLabelValues(reason).Inc()
}

// Rejected returns the rejection counter for reason, for tests and the
// CoAPS listener (go-coap's own 4.02s).
func (m *Metrics) Rejected(reason string) prometheus.Counter {
	return m.rejected.WithLabelValues(reason)
}

// dotted holds "c.dd" (RFC 7252 §3) for every code, so labelling a request
// allocates nothing.
var dotted = func() (t [256]string) {
	for c := range t {
		t[c] = fmt.Sprintf("%d.%02d", c>>5, c&31)
	}
	return t
}()
