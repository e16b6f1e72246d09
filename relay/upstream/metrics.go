package upstream

import "github.com/prometheus/client_golang/prometheus"

// Drop reasons (label values of Metrics.Dropped).
const (
	DropForeignDevice = "foreign_device" // frame for a device the link was not opened for
	DropUndecodable   = "undecodable"    // not a JSON live-log entry
	DropBinary        = "binary"         // a binary frame: the contract only has text frames
	DropSlowClient    = "slow_client"    // a browser's queue was full (it is disconnected)
)

// Metrics counts the upstream side of the relay.
type Metrics struct {
	Upstreams    prometheus.Gauge
	Connected    prometheus.Gauge
	Reconnects   prometheus.Counter
	DialFailures prometheus.Counter
	Frames       prometheus.Counter
	Deliveries   prometheus.Counter
	Dropped      *prometheus.CounterVec
	Statuses     *prometheus.CounterVec
}

// NewMetrics registers the upstream metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Upstreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_relay_upstreams", Help: "Watched devices, each with one upstream /ws link (connected or reconnecting).",
		}),
		Connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_relay_upstreams_connected", Help: "Upstream links currently connected.",
		}),
		Reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_upstream_reconnects_total", Help: "Upstream links re-established after a loss.",
		}),
		DialFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_upstream_dial_failures_total", Help: "Failed upstream connection attempts.",
		}),
		Frames: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_frames_forwarded_total", Help: "Upstream frames forwarded to a device's watchers (encoded once each).",
		}),
		Deliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_frame_deliveries_total", Help: "Frames queued to browsers (one per watcher per frame).",
		}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_frames_dropped_total", Help: "Frames not delivered, by reason.",
		}, []string{"reason"}),
		Statuses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_status_entries_total", Help: "Status entries sent to watchers, by state (lost, restored).",
		}, []string{"state"}),
	}
	reg.MustRegister(m.Upstreams, m.Connected, m.Reconnects, m.DialFailures, m.Frames, m.Deliveries, m.Dropped, m.Statuses)
	return m
}
