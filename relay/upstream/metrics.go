package upstream

import "github.com/prometheus/client_golang/prometheus"

// Drop reasons (label values of Metrics.Dropped).
const (
	DropForeignDevice = "foreign_device" // frame for a device the link was not opened for
	DropUndecodable   = "undecodable"    // not a JSON live-log entry
	DropBinary        = "binary"         // a binary frame: the contract only has text frames
	DropSlowClient    = "slow_client"    // a browser's queue was full (it is disconnected)
	DropRepeat        = "repeat"         // seq not above the last forwarded: sent already
	DropNotice        = "notice"         // a retransmission report found a browser's queue full (it stays open)
)

// How a since= or tail= start was served (label values of Metrics.Starts).
const (
	StartRing      = "ring"      // from the shared link's ring
	StartUpstream  = "upstream"  // the first watcher opened the shared link with it
	StartDedicated = "dedicated" // a dedicated upstream connection (the ring could not answer)
)

// How a dedicated link ended being dedicated (label values of Metrics.Merges).
const (
	MergeJoined   = "joined"   // its watcher moved to the shared link
	MergePromoted = "promoted" // it became the shared link (the device had none left)
)

// Metrics counts the upstream side of the relay.
type Metrics struct {
	Upstreams      prometheus.Gauge
	Connected      prometheus.Gauge
	Reconnects     prometheus.Counter
	DialFailures   prometheus.Counter
	Frames         prometheus.Counter
	Deliveries     prometheus.Counter
	Dropped        *prometheus.CounterVec
	Statuses       *prometheus.CounterVec
	Dedicated      prometheus.Gauge
	Starts         *prometheus.CounterVec
	Resets         prometheus.Counter
	Positions      prometheus.Counter
	HistoryBytes   prometheus.Gauge
	HistoryEvicted prometheus.Counter
	Merges         *prometheus.CounterVec
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
		Dedicated: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_relay_upstreams_dedicated", Help: "Dedicated upstream links: one browser's since/tail start the shared link's history could not answer.",
		}),
		Starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_history_starts_total", Help: "Browser since/tail starts, by how they were served (ring, upstream, dedicated).",
		}, []string{"served"}),
		Resets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_upstream_resets_total", Help: "recovered:false statuses from coap-server (position no longer retained, or stream reset).",
		}),
		Positions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_upstream_positions_total", Help: "Positions coap-server reported at the end of a connection's history (position=1; kept, not forwarded).",
		}),
		HistoryBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nbiot_relay_history_bytes", Help: "Bytes of entries kept in the links' history rings.",
		}),
		HistoryEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_history_evicted_total", Help: "Entries pushed out of a history ring by its entry or byte bound.",
		}),
		Merges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nbiot_relay_dedicated_merged_total", Help: "Dedicated links no longer needed: watcher moved to the shared link (joined) or link became the shared one (promoted).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.Upstreams, m.Connected, m.Reconnects, m.DialFailures, m.Frames, m.Deliveries, m.Dropped, m.Statuses,
		m.Dedicated, m.Starts, m.Resets, m.Positions, m.HistoryBytes, m.HistoryEvicted, m.Merges)
	return m
}
