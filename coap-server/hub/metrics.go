package hub

import "github.com/prometheus/client_golang/prometheus"

// Reasons a notice is lost to every subscriber (label values of
// Metrics.NoticesLost).
const (
	LostOversize = "oversize"  // larger than a live-log entry can be
	LostHeldFull = "held_full" // the oldest held, pushed out by newer ones
)

// Metrics counts the fan-out.
type Metrics struct {
	Subscribers prometheus.Gauge
	Frames      prometheus.Counter
	Dropped     prometheus.Counter
	// NoticesDropped counts reports (frames without seq) a subscriber's
	// full queue did not take; it stays connected.
	NoticesDropped prometheus.Counter
	EncodeErrors   prometheus.Counter
	// NoticesLost counts notices the hub dropped before any subscriber
	// saw them, once each, by reason (LostOversize, LostHeldFull).
	NoticesLost *prometheus.CounterVec
}

// NewMetrics registers the hub metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_ws_subscribers", Help: "WebSocket subscribers connected to /ws.",
		}),
		Frames: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_livelog_frames_total", Help: "Live-log frames published.",
		}),
		Dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_ws_dropped_total", Help: "Frames a subscriber could not take (it is then disconnected as too slow).",
		}),
		NoticesDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_ws_notices_dropped_total", Help: "Retransmission reports a subscriber did not take: its queue was full (it stays connected), or 64 (128 KiB) were held while its history was sent.",
		}),
		EncodeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_livelog_encode_errors_total", Help: "Entries that could not be encoded (a bug).",
		}),
		NoticesLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_livelog_notices_dropped_total", Help: "Retransmission reports dropped before reaching any subscriber, by reason (oversize: larger than a live-log entry; held_full: pushed out while waiting for their entry, past 256 or 1 MiB held).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.Subscribers, m.Frames, m.Dropped, m.NoticesDropped, m.EncodeErrors, m.NoticesLost)
	return m
}
