package downlink

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the downlink service does.
type Metrics struct {
	Sent    prometheus.Counter
	Applied prometheus.Counter
	Pending prometheus.Gauge
	// Dropped counts downlinks or stamps given up, by reason: cache_full,
	// invalid_config, stamp_queue_full, stamp_failed.
	Dropped *prometheus.CounterVec
	// RefreshErrors counts failed loads, listens and polls.
	RefreshErrors prometheus.Counter
}

// NewMetrics registers the downlink metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_downlinks_sent_total", Help: "Downlinks put in a 2.04 (resends included).",
		}),
		Applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_downlinks_applied_total", Help: "Downlinks a device reported as applied.",
		}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_downlinks_pending", Help: "Devices with a downlink not yet applied, in memory.",
		}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_downlinks_dropped_total",
			Help: "Downlinks or stamps given up, by reason (cache_full, invalid_config, stamp_queue_full, stamp_failed).",
		}, []string{"reason"}),
		RefreshErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_downlink_refresh_errors_total", Help: "Failed loads, LISTEN connections and polls of pending downlinks.",
		}),
	}
	reg.MustRegister(m.Sent, m.Applied, m.Pending, m.Dropped, m.RefreshErrors)
	return m
}
