// Package stream is coap-server's durable backbone on NATS JetStream: the
// engine (an embedded single-node server, or an external cluster at
// NATS_URL), the UPLINKS stream that makes an accepted uplink durable
// before it is answered, and the LIVELOG stream whose positions are the
// live-log entries' seq.
package stream

import (
	"log/slog"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/memlimit"
)

// Stream and subject names. Subjects end in the device ID, which the
// contract limits to [A-Za-z0-9_-]: always one valid subject token.
const (
	UplinksStream   = "UPLINKS"
	LiveLogStream   = "LIVELOG"
	uplinkSubject   = "nbiot.uplink."
	liveSubject     = "nbiot.live."
	notifySubject   = "nbiot.notify."
	StorageConsumer = "storage"
)

// Defaults of Config.
const (
	DefaultDataDir        = "./data"
	DefaultUplinksBytes   = 512 << 20
	DefaultLiveMaxAge     = 24 * time.Hour
	DefaultLiveBytes      = 256 << 20
	DefaultLivePerDevice  = 1000
	DefaultDuplicates     = 250 * time.Second
	DefaultAckTimeout     = 2 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	// MaxEntryBytes bounds one live-log message (an entry is well under
	// 2 KiB; MAX_UPLINK_BYTES caps what a device can make it carry).
	MaxEntryBytes = 64 << 10
)

// Config configures the engine and its streams. Zero fields take defaults.
type Config struct {
	// URL (NATS_URL) is an external NATS with JetStream, e.g. a cluster of
	// three ("nats://a:4222,nats://b:4222,nats://c:4222"). Empty = embedded.
	URL string
	// DataDir (DATA_DIR, default ./data) holds the embedded server's file store.
	DataDir string
	// Creds (NATS_CREDS) is a NATS credentials file: a user JWT and its
	// NKey seed, as a hosted NATS or nsc hands them out. CAFile (NATS_CA)
	// is a PEM file of the CAs that sign the servers' certificates (tls://
	// with a private CA); CertFile and KeyFile (NATS_CERT, NATS_KEY) are a
	// client certificate for servers that ask for one. Each is a path or
	// the file's content, read at Open, and needs URL (auth.go).
	Creds, CAFile, CertFile, KeyFile string
	// SyncAlways (NATS_SYNC_ALWAYS) makes the embedded server fsync every
	// message: it survives a power cut, not just a crash, at a cost
	// measured in the README. Default off: writes reach the OS at once and
	// survive kill -9; fsync runs every 2 minutes.
	SyncAlways bool
	// Replicas of each stream on an external cluster (NATS_REPLICAS,
	// default 1; use 3 on a cluster of three). The embedded server has one.
	Replicas int
	// UplinksBytes (UPLINKS_MAX_BYTES, default 512 MiB) bounds uplinks
	// waiting for the database, on disk. When full, uplinks get 5.03.
	UplinksBytes int64
	// Storage is true when a database consumes UPLINKS; without one,
	// uplinks go to the live log only.
	Storage bool
	// LiveMaxAge, LiveBytes and LivePerDevice (LIVELOG_MAX_AGE, default
	// 24h; LIVELOG_MAX_BYTES, default 256 MiB; LIVELOG_PER_DEVICE, default
	// 1000) bound the retained live log; the oldest entries go first.
	LiveMaxAge    time.Duration
	LiveBytes     int64
	LivePerDevice int64
	// Duplicates is the window in which a publish with a known message ID
	// is recognised (default 250 s: CoAP's EXCHANGE_LIFETIME, 247 s after a
	// device's first transmission, after which it sends no copy of it, and
	// a margin; an ID is stored later than that transmission, never earlier).
	// With NATS_URL the cluster holds every ID for the whole window, so it
	// is no longer than it must be (it was 5 min: a fifth more IDs held).
	// The embedded engine publishes no IDs (see Engine.Log).
	Duplicates time.Duration
	// DeviceMemory bounds the memory of the distinct devices the embedded
	// server holds entries of (DeviceBytes each): default a sixteenth of
	// the process's memory, 25 MiB (68,266 devices) at GOMEMLIMIT=400MiB.
	// Past it an uplink of a new device gets 5.03 (ErrTooManyDevices);
	// devices already counted are not affected. No bound with NATS_URL.
	DeviceMemory int64
	// AckTimeout bounds the wait for the stream's acknowledgement of one
	// publish (default 2 s); past it the uplink is refused with 5.03.
	AckTimeout time.Duration
	// RedeliverAfter (STORAGE_REDELIVERY, default 1m) is how long an
	// uplink fetched by a storage worker may go unacknowledged before the
	// stream gives it to another: the time a dead instance's batch waits.
	RedeliverAfter time.Duration
	// ConnectTimeout bounds start-up (default 10 s).
	ConnectTimeout time.Duration
	// EntriesFollow declares that whoever calls PublishUplink logs the
	// uplink's entry with LogBehind once it returned nil, as the ingest
	// handler does when Behind. The storage consumer then deletes an
	// uplink from UPLINKS only once its entry is resolved (ledger.go), so
	// that RecoverEntries finds every entry a crash lost. Only with
	// storage on the embedded engine.
	EntriesFollow bool
	Logger        *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.UplinksBytes <= 0 {
		c.UplinksBytes = DefaultUplinksBytes
	}
	if c.LiveMaxAge <= 0 {
		c.LiveMaxAge = DefaultLiveMaxAge
	}
	if c.LiveBytes <= 0 {
		c.LiveBytes = DefaultLiveBytes
	}
	if c.LivePerDevice <= 0 {
		c.LivePerDevice = DefaultLivePerDevice
	}
	if c.DeviceMemory <= 0 && c.URL == "" {
		c.DeviceMemory = memlimit.Bytes() / deviceShare
	}
	if c.Duplicates <= 0 {
		c.Duplicates = DefaultDuplicates
	}
	if c.Duplicates > c.LiveMaxAge {
		c.Duplicates = c.LiveMaxAge
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = DefaultAckTimeout
	}
	if c.RedeliverAfter <= 0 {
		c.RedeliverAfter = time.Minute
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
