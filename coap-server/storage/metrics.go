package storage

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the consumer does. Counters are in uplinks, not rows.
type Metrics struct {
	Stored      prometheus.Counter
	Rejected    prometheus.Counter
	WriteErrors prometheus.Counter
	FetchErrors prometheus.Counter
	AckErrors   prometheus.Counter
	Abandoned   prometheus.Counter
	Rows        prometheus.Counter
	BatchTime   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_stored_total", Help: "Uplinks written to the database (and acknowledged on the stream).",
		}),
		Rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_rejected_total", Help: "Uplinks the database refused for good (logged with uplink_id and skipped).",
		}),
		WriteErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_write_errors_total", Help: "Failed batch writes that were retried (database down, slow or failing).",
		}),
		FetchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_fetch_errors_total", Help: "Failed fetches from the uplink stream (NATS unreachable).",
		}),
		AckErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_ack_errors_total", Help: "Stored uplinks whose acknowledgement failed (they are written again, idempotently).",
		}),
		Abandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_abandoned_total", Help: "Uplinks whose write was abandoned at the shutdown deadline (left in the stream, not lost).",
		}),
		Rows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_rows_total", Help: "Rows sent in successful batch writes (all tables).",
		}),
		BatchTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nbiot_storage_batch_seconds", Help: "Duration of one batch write attempt.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
	}
	reg.MustRegister(m.Stored, m.Rejected, m.WriteErrors, m.FetchErrors, m.AckErrors, m.Abandoned, m.Rows, m.BatchTime)
	return m
}
