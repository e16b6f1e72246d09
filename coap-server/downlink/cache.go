package downlink

import (
	"fmt"
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
	// Done: applied_at or superseded_at is set. The row is never sent, and
	// neither is any older row of the device: the newest row decides.
	Done bool
}

// What the cache charges an entry beyond the bytes it holds (the device
// ID, the encoded downlink and the config's two strings), measured by
// TestCacheBytesMatchTheHeap: the map slot and the device struct, and for
// a deliverable entry its livelog.Config with the three interval fields it
// points to.
const (
	entryOverhead  = 104
	configOverhead = 96
)

// evictScan bounds the entries one Put looks at for room, so that a full
// cache costs each Put a bounded walk of the map.
const evictScan = 256

// device is the in-memory state of one device's newest downlink.
type device struct {
	id      int64
	payload []byte          // encoded nbiotv1.Downlink, built once; nil for a tombstone
	config  *livelog.Config // what the live log shows
	bytes   int64           // what the entry is charged against Cache.max
	sent    bool            // sent to the device (or sent_at was set when read)
	applied bool
	// tomb: row id cannot be delivered (its config is invalid, it was
	// applied or superseded when read, or the cache had no room for it).
	// It answers nothing and hides the device's older rows; a Put of the
	// same id replaces it only with a deliverable entry (the cache found
	// room since).
	tomb bool
	// sentStamp and appliedStamp: the stamp is written or queued. The
	// stamper clears them when it gives a stamp up (stampLost), and the
	// next uplink that would have stamped queues it again.
	sentStamp, appliedStamp bool
}

// pending: the entry is a downlink not applied yet.
func (d *device) pending() bool { return !d.tomb && !d.applied }

// evictable: the entry only fills config_applied (applied) or hides older
// rows (tombstone); dropping it loses no configuration to deliver.
func (d *device) evictable() bool { return d.tomb || d.applied }

// Cache holds the newest downlink of each device and answers uplinks from
// memory. It is safe for concurrent use.
type Cache struct {
	max     int64 // bytes
	metrics *Metrics
	log     *slog.Logger
	stamps  *Stamper
	live    func(*livelog.Entry) // "queued" entries; nil = none (Config.Live)
	now     func() time.Time

	mu      sync.Mutex
	devices map[string]*device
	bytes   int64
	pending int
}

// NewCache returns a cache of at most maxBytes (entries charged as
// entryBytes says) that hands its sent_at and applied_at stamps to stamps.
func NewCache(maxBytes int64, stamps *Stamper, m *Metrics, logger *slog.Logger) *Cache {
	return &Cache{max: maxBytes, metrics: m, log: logger, stamps: stamps, now: time.Now, devices: make(map[string]*device)}
}

// entryBytes is what an entry for deviceID is charged.
func entryBytes(deviceID string, d *device) int64 {
	n := entryOverhead + int64(len(deviceID)+len(d.payload))
	if d.config != nil {
		n += configOverhead + int64(len(d.config.HwVersion)+len(d.config.FwVersion))
	}
	return n
}

// entry builds what the cache holds for r: the encoded downlink, or a
// tombstone when r is done or cannot be delivered (err says why).
func entry(r Row) (*device, error) {
	if r.Done {
		return tombstone(r), nil
	}
	cfg, err := ConfigFromJSON(r.Config, r.ID)
	if err != nil {
		return tombstone(r), err
	}
	payload, err := proto.Marshal(&nbiotv1.Downlink{Config: cfg})
	if err != nil {
		return tombstone(r), fmt.Errorf("%w: not encodable: %v", ErrConfig, err)
	}
	d := &device{id: r.ID, payload: payload, config: livelog.ConfigOf(cfg), sent: r.Sent, sentStamp: r.Sent}
	d.bytes = entryBytes(r.DeviceID, d)
	return d, nil
}

func tombstone(r Row) *device {
	d := &device{id: r.ID, tomb: true}
	d.bytes = entryBytes(r.DeviceID, d)
	return d
}

// placement is what Put did with a row.
type placement int

const (
	kept   placement = iota // older than the entry held, or the same row: nothing changed
	held                    // the row's entry is held
	noRoom                  // no room: a deliverable row is a tombstone, or nothing, in its place
)

// Put records a row read from the database, by the newest-row rule:
// older rows than the one held are ignored; a newer one replaces it,
// deliverable or not, so that a row the user replaced is never sent once
// the cache knows of the newer one. A Put of the row held changes
// nothing but its sent flag, so a reload counts and logs an invalid row
// once, not each time it reads it. A new row not sent yet is announced
// on the live log as "queued", before any uplink can be answered with it:
// the announcement is handed to the live log (which never blocks for
// long) while the row is not visible yet, so the queued entry precedes
// that uplink's entries.
func (c *Cache) Put(r Row) {
	nd, err := entry(r)
	c.mu.Lock()
	p := c.place(r.DeviceID, nd)
	c.metrics.Pending.Set(float64(c.pending))
	c.mu.Unlock()
	switch {
	case err != nil && p != kept:
		c.metrics.Dropped.WithLabelValues("invalid_config").Inc()
		c.log.Warn("downlink not deliverable", "device", r.DeviceID, "downlink_id", r.ID, "err", err)
	case p == noRoom && !nd.tomb:
		c.metrics.Dropped.WithLabelValues("cache_full").Inc()
		c.log.Warn("downlink not held: cache full", "device", r.DeviceID, "downlink_id", r.ID)
	}
}

// place applies Put's rule to nd under c.mu.
func (c *Cache) place(deviceID string, nd *device) placement {
	d, ok := c.devices[deviceID]
	switch {
	case ok && nd.id < d.id:
		return kept
	case ok && nd.id == d.id && (!d.tomb || nd.tomb):
		d.sent = d.sent || nd.sent
		d.sentStamp = d.sentStamp || nd.sent
		return kept
	case ok:
		c.remove(deviceID, d)
	}
	p := held
	if !c.room(nd.bytes) {
		if !ok {
			return noRoom
		}
		// The older entry is gone, so a tombstone (charged no more than
		// it) fits: it keeps hiding the rows behind this one.
		p, nd = noRoom, tombstone(Row{ID: nd.id, DeviceID: deviceID})
	}
	if !nd.tomb && !nd.sent && c.live != nil { // not sent: new, not a reload after a restart
		c.live(livelog.Downlink(deviceID, c.now(), nd.id, livelog.DownlinkQueued, nd.config))
	}
	c.add(deviceID, nd)
	return p
}

// room makes room for need bytes, evicting tombstones and applied entries
// among at most evictScan entries, and says whether it did.
func (c *Cache) room(need int64) bool {
	n := 0
	for id, d := range c.devices {
		if c.bytes+need <= c.max || n >= evictScan {
			break
		}
		if d.evictable() {
			c.remove(id, d)
		}
		n++
	}
	return c.bytes+need <= c.max
}

func (c *Cache) add(deviceID string, d *device) {
	c.devices[deviceID] = d
	c.bytes += d.bytes
	if d.pending() {
		c.pending++
	}
}

func (c *Cache) remove(deviceID string, d *device) {
	delete(c.devices, deviceID)
	c.bytes -= d.bytes
	if d.pending() {
		c.pending--
	}
}

// ForUplink implements ingest.Downlinks: it returns the pending downlink
// for a's device (nil when none) with its "sent" live-log entry, or, for
// the uplink that reports the pending config_version, no payload and the
// "applied" entry; and, once a downlink was sent to the device, the
// uplink's config_applied. It only touches memory. A stamp the stamper
// dropped or gave up is queued again by the next uplink that would have
// caused it: a send of that downlink, or a report of its version.
func (c *Cache) ForUplink(a uplink.Accepted) (payload []byte, configApplied *bool, entry *livelog.Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.devices[a.DeviceID]
	if !ok || d.tomb {
		return nil, nil, nil
	}
	reported := a.Uplink.GetConfig()
	matches := reported != nil && reported.ConfigVersion != nil && reported.GetConfigVersion() == livelog.ConfigVersion(d.id)
	if d.sent || d.applied {
		configApplied = &matches
	}
	if d.applied {
		if matches && !d.appliedStamp {
			d.appliedStamp = c.stamps.Applied(d.id, a.DeviceID, a.ReceivedAt)
		}
		return nil, configApplied, nil
	}
	if matches {
		d.applied = true
		c.pending--
		c.metrics.Pending.Set(float64(c.pending))
		c.metrics.Applied.Inc()
		d.appliedStamp = c.stamps.Applied(d.id, a.DeviceID, a.ReceivedAt)
		return nil, configApplied, livelog.Downlink(a.DeviceID, a.ReceivedAt, d.id, livelog.DownlinkApplied, d.config)
	}
	d.sent = true
	if !d.sentStamp {
		d.sentStamp = c.stamps.Sent(d.id, a.DeviceID, a.ReceivedAt)
	}
	c.metrics.Sent.Inc()
	return d.payload, configApplied, livelog.Downlink(a.DeviceID, a.ReceivedAt, d.id, livelog.DownlinkSent, d.config)
}

// stampLost is the stamper's word that it gave up the stamp of row id
// (applied_at, else sent_at): the next uplink that would have stamped it
// queues it again. The stamper's writer calls it, never under c.mu.
func (c *Cache) stampLost(id int64, deviceID string, applied bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.devices[deviceID]
	if !ok || d.id != id {
		return
	}
	if applied {
		d.appliedStamp = false
	} else {
		d.sentStamp = false
	}
}

// Len is the number of devices held (tombstones included).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.devices)
}

// Holds reports whether the cache holds row id for deviceID, deliverable
// or not (for tests waiting on a notification).
func (c *Cache) Holds(deviceID string, id int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.devices[deviceID]
	return ok && d.id == id
}
