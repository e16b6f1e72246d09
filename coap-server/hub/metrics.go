package hub

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts the fan-out.
type Metrics struct {
	Subscribers prometheus.Gauge
	Frames      prometheus.Counter
	Dropped     prometheus.Counter
	// NoticesDropped counts reports (frames without seq) a subscriber's
	// full queue did not take; it stays connected.
	NoticesDropped prometheus.Counter
	EncodeErrors   prometheus.Counter
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
			Name: "nbiot_ws_notices_dropped_total", Help: "Retransmission reports a subscriber did not take: its queue was full (it stays connected), or 64 were held while its history was sent.",
		}),
		EncodeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_livelog_encode_errors_total", Help: "Entries that could not be encoded (a bug).",
		}),
	}
	reg.MustRegister(m.Subscribers, m.Frames, m.Dropped, m.NoticesDropped, m.EncodeErrors)
	return m
}
