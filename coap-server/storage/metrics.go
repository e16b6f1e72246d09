package storage

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metrics counts what the queue does. Counters are in uplinks (records),
// not rows.
type Metrics struct {
	Enqueued    prometheus.Counter
	QueueFull   prometheus.Counter
	Stored      prometheus.Counter
	Rejected    prometheus.Counter
	WriteErrors prometheus.Counter
	Unstored    prometheus.Counter
	Rows        prometheus.Counter
	BatchTime   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, length func() float64, capacity int) *Metrics {
	m := &Metrics{
		Enqueued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_enqueued_total", Help: "Uplinks taken into the storage queue.",
		}),
		QueueFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_queue_full_total", Help: "Uplinks refused because the storage queue was full (answered 5.03).",
		}),
		Stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_stored_total", Help: "Uplinks written to the database.",
		}),
		Rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_rejected_total", Help: "Uplinks the database refused for good (logged with uplink_id and skipped).",
		}),
		WriteErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_write_errors_total", Help: "Failed batch writes that were retried (database down, slow or failing).",
		}),
		Unstored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_unstored_total", Help: "Uplinks still queued when the shutdown deadline ran out (lost).",
		}),
		Rows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_storage_rows_total", Help: "Rows sent in successful batch writes (all tables).",
		}),
		BatchTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nbiot_storage_batch_seconds", Help: "Duration of one batch write attempt.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
	}
	reg.MustRegister(m.Enqueued, m.QueueFull, m.Stored, m.Rejected, m.WriteErrors, m.Unstored, m.Rows, m.BatchTime,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nbiot_storage_queue_length", Help: "Uplinks waiting in the storage queue.",
		}, length),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nbiot_storage_queue_capacity", Help: "Uplinks the storage queue holds at most (STORAGE_QUEUE_SIZE).",
		}, func() float64 { return float64(capacity) }))
	return m
}

// counterValue reads a counter, so Close can say how many uplinks it lost.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}
