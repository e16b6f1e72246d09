package ingest

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// LeanMetrics counts what the lean datagram path does with datagrams
// before (and besides) the uplink logic, which Metrics counts.
type LeanMetrics struct {
	junk              prometheus.Counter
	ignored           prometheus.Counter
	malformed         prometheus.Counter
	pings             prometheus.Counter
	resets            prometheus.Counter
	badOption         prometheus.Counter
	inflightDuplicate prometheus.Counter
	full              prometheus.Counter
	sourceShare       prometheus.Counter
	writeErrors       prometheus.Counter
	shortened         prometheus.Counter
	queuedBytes       prometheus.GaugeFunc
	// queued is the server's count of queued bytes, read when scraped
	// (nbiot_coap_queue_bytes): nothing per datagram, never stale.
	queued atomic.Pointer[atomic.Int64]
}

// NewLeanMetrics registers the lean path's metrics on reg.
func NewLeanMetrics(reg prometheus.Registerer) *LeanMetrics {
	datagrams := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nbiot_coap_datagrams_total",
		Help: "Plain-CoAP datagrams not handed to the uplink logic, by outcome: junk (no CoAP header), " +
			"ignored (ACK, RST, NON without a request, a response), malformed, ping, bad_option (4.02), " +
			"duplicate_in_flight (a copy of an exchange being answered), queue_full (dropped: the workers' queue is at its bound), " +
			"source_share (dropped: its source endpoint is over its share of the queue and the overflow lane, half the queue, is full).",
	}, []string{"outcome"})
	m := &LeanMetrics{
		junk:              datagrams.WithLabelValues("junk"),
		ignored:           datagrams.WithLabelValues("ignored"),
		malformed:         datagrams.WithLabelValues("malformed"),
		pings:             datagrams.WithLabelValues("ping"),
		badOption:         datagrams.WithLabelValues("bad_option"),
		inflightDuplicate: datagrams.WithLabelValues("duplicate_in_flight"),
		full:              datagrams.WithLabelValues("queue_full"),
		sourceShare:       datagrams.WithLabelValues("source_share"),
		resets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_coap_resets_sent_total", Help: "RST messages sent (pings, malformed or unexpected CON, RFC 7252 §4.2).",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_coap_write_errors_total", Help: "Plain-CoAP answers that could not be encoded or sent.",
		}),
		shortened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_coap_answers_shortened_total",
			Help: "Plain-CoAP error answers sent without their diagnostic text, which would have made them more than 3 times the size of the request (a spoofed source's amplification).",
		}),
	}
	m.queuedBytes = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nbiot_coap_queue_bytes", Help: "Bytes of datagrams waiting for a worker (bounded by the queue's byte limit).",
	}, func() float64 {
		if n := m.queued.Load(); n != nil {
			return float64(n.Load())
		}
		return 0
	})
	reg.MustRegister(datagrams, m.resets, m.writeErrors, m.shortened, m.queuedBytes)
	return m
}

// QueueFull is the count of datagrams dropped because the queue was at
// its bound, for tests.
func (m *LeanMetrics) QueueFull() prometheus.Counter { return m.full }

// InflightDuplicates is the count of copies dropped while their first
// copy was being answered, for tests.
func (m *LeanMetrics) InflightDuplicates() prometheus.Counter { return m.inflightDuplicate }
