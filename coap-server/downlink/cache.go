package downlink

import (
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// Row is one device_downlinks row as the service needs it.
type Row struct {
	ID       int64
	DeviceID string
	Config   []byte // the jsonb config, as JSON text
	Sent     bool   // sent_at is set
}

// device is the in-memory state of one device's newest downlink.
type device struct {
	id      int64
	payload []byte          // encoded nbiotv1.Downlink, built once
	config  *livelog.Config // what the live log shows
	sent    bool
	applied bool
}

// Cache holds the newest downlink of each device and answers uplinks from
// memory. It is safe for concurrent use.
type Cache struct {
	max     int
	metrics *Metrics
	log     *slog.Logger
	stamps  *Stamper
	live    func(*livelog.Entry) // "queued" entries; nil = none (Config.Live)
	now     func() time.Time

	mu      sync.Mutex
	devices map[string]*device
	pending int
}

// NewCache returns a cache of at most max devices that hands its sent_at and
// applied_at stamps to stamps.
func NewCache(max int, stamps *Stamper, m *Metrics, logger *slog.Logger) *Cache {
	return &Cache{max: max, metrics: m, log: logger, stamps: stamps, now: time.Now, devices: make(map[string]*device)}
}

// Put records a row read from the database. Older rows than the one held
// are ignored; a newer one replaces it (and will supersede it when sent).
// A new row not sent yet is announced on the live log as "queued", before
// any uplink can be answered with it: the announcement is handed to the
// live log (which never blocks for long) while the row is not visible yet,
// so the queued entry precedes that uplink's entries.
func (c *Cache) Put(r Row) {
	cfg, err := ConfigFromJSON(r.Config, r.ID)
	if err != nil {
		c.metrics.Dropped.WithLabelValues("invalid_config").Inc()
		c.log.Warn("downlink not deliverable", "device", r.DeviceID, "downlink_id", r.ID, "err", err)
		return
	}
	payload, err := proto.Marshal(&nbiotv1.Downlink{Config: cfg})
	if err != nil {
		c.metrics.Dropped.WithLabelValues("invalid_config").Inc()
		c.log.Warn("downlink not encodable", "device", r.DeviceID, "downlink_id", r.ID, "err", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.devices[r.DeviceID]
	switch {
	case ok && r.ID < d.id:
		return
	case ok && r.ID == d.id:
		d.sent = d.sent || r.Sent
		return
	case !ok && len(c.devices) >= c.max && !c.evictApplied():
		c.metrics.Dropped.WithLabelValues("cache_full").Inc()
		c.log.Warn("downlink not held: cache full", "device", r.DeviceID, "downlink_id", r.ID)
		return
	}
	if ok && !d.applied {
		c.pending--
	}
	nd := &device{id: r.ID, payload: payload, config: livelog.ConfigOf(cfg), sent: r.Sent}
	if !r.Sent && c.live != nil { // not sent: new, not a reload after a restart
		c.live(livelog.Downlink(r.DeviceID, c.now(), r.ID, livelog.DownlinkQueued, nd.config))
	}
	c.devices[r.DeviceID] = nd
	c.pending++
	c.metrics.Pending.Set(float64(c.pending))
}

// evictApplied drops one device whose downlink was applied (kept only to
// fill config_applied), looking at a bounded number of entries.
func (c *Cache) evictApplied() bool {
	n := 0
	for id, d := range c.devices {
		if d.applied {
			delete(c.devices, id)
			return true
		}
		if n++; n >= 256 {
			break
		}
	}
	return false
}

// ForUplink implements ingest.Downlinks: it returns the pending downlink
// for a's device (nil when none) with its "sent" live-log entry, or, for
// the uplink that reports the pending config_version, no payload and the
// "applied" entry; and, once a downlink was sent to the device, the
// uplink's config_applied. It only touches memory.
func (c *Cache) ForUplink(a uplink.Accepted) (payload []byte, configApplied *bool, entry *livelog.Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.devices[a.DeviceID]
	if !ok {
		return nil, nil, nil
	}
	reported := a.Uplink.GetConfig()
	matches := reported != nil && reported.ConfigVersion != nil && int64(reported.GetConfigVersion()) == d.id
	if d.sent || d.applied {
		configApplied = &matches
	}
	if d.applied {
		return nil, configApplied, nil
	}
	if matches {
		d.applied = true
		c.pending--
		c.metrics.Pending.Set(float64(c.pending))
		c.metrics.Applied.Inc()
		c.stamps.Applied(d.id, a.DeviceID, a.ReceivedAt)
		return nil, configApplied, livelog.Downlink(a.DeviceID, a.ReceivedAt, d.id, livelog.DownlinkApplied, d.config)
	}
	if !d.sent {
		d.sent = true
		c.stamps.Sent(d.id, a.DeviceID, a.ReceivedAt)
	}
	c.metrics.Sent.Inc()
	return d.payload, configApplied, livelog.Downlink(a.DeviceID, a.ReceivedAt, d.id, livelog.DownlinkSent, d.config)
}

// Len is the number of devices held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.devices)
}

// Holds reports whether the cache holds row id for deviceID (for tests
// waiting on a notification).
func (c *Cache) Holds(deviceID string, id int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.devices[deviceID]
	return ok && d.id == id
}
