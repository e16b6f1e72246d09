package stream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
)

// Engine is the connection to JetStream and the two streams.
//
// It holds three connections, so that no kind of traffic queues behind
// another on one socket: publishes from the datagram path (nc), the
// live-log feed and history (feed), and the storage consumer's fetches
// and acknowledgements (store). Each has its own handles on the streams.
type Engine struct {
	cfg     Config
	ns      *server.Server // nil with an external NATS_URL
	nc      *nats.Conn
	js      jetstream.JetStream
	acks    *acker           // the publishes an answer waits for
	uplinks jetstream.Stream // nil without storage
	live    jetstream.Stream

	feed        *nats.Conn
	feedJS      jetstream.JetStream
	feedLive    jetstream.Stream
	store       *nats.Conn
	storeUplink jetstream.Stream // nil without storage

	batches batcher       // of UPLINKS publishes
	groups  *liveGroups   // of LIVELOG publishes, embedded; nil with NATS_URL
	ledger  *ledger       // entries owed to accepted uplinks, when Behind (ledger.go)
	devices *deviceBudget // nil with NATS_URL
	closed  chan struct{} // closed by the publish connection's ClosedHandler
	// asyncErrors counts LogAsync and LogBehind publishes that failed.
	asyncErrors atomic.Int64
	behindWaits atomic.Int64 // LogBehind callers that waited (BehindWaits)
}

// AsyncErrors is the number of LogAsync and LogBehind entries the stream
// did not take, or whose storage its acknowledgement did not confirm.
func (e *Engine) AsyncErrors() int64 { return e.asyncErrors.Load() }

// EntryWaitTimeouts is the number of storage acknowledgements that gave
// up waiting for their uplinks' live-log entries (ledger.go).
func (e *Engine) EntryWaitTimeouts() int64 {
	if e.ledger == nil {
		return 0
	}
	e.ledger.mu.Lock()
	defer e.ledger.mu.Unlock()
	return e.ledger.timeouts
}

// BehindWaits is the number of LogBehind callers that waited for their
// entry because too many entries were waiting already (maxBehindBytes).
func (e *Engine) BehindWaits() int64 { return e.behindWaits.Load() }

// UnconfirmedEntries is the number of live-log entries refused because
// their group's acknowledgement did not show them stored (livegroup.go;
// always 0 with NATS_URL).
func (e *Engine) UnconfirmedEntries() int64 {
	if e.groups == nil {
		return 0
	}
	return e.groups.Unconfirmed()
}

// EntriesSentAgain is the number of live-log entries behind their answers
// that the stream dropped and that were sent a second time (livegroup.go;
// always 0 with NATS_URL).
func (e *Engine) EntriesSentAgain() int64 {
	if e.groups == nil {
		return 0
	}
	return e.groups.SentAgain()
}

// DevicesHeld is the number of distinct devices the embedded server holds
// entries of, by this engine's count, and the most it may (both 0 with
// NATS_URL).
func (e *Engine) DevicesHeld() (held, maxDevices int) { return e.devices.state() }

// Open starts the embedded server (no NATS_URL) or connects to the
// external one, then creates or updates the streams and the storage
// consumer; doing so again with the same configuration changes nothing.
// Errors name the variable at fault and never a credential.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	cfg = cfg.withDefaults()
	e := &Engine{cfg: cfg, closed: make(chan struct{})}
	e.batches.e = e
	if cfg.URL == "" {
		e.devices = newDeviceBudget(int(cfg.DeviceMemory/DeviceBytes), cfg.LiveMaxAge)
		e.groups = &liveGroups{e: e, key: make([]string, 1), maxAsync: maxAsyncBytes, maxBehind: maxBehindBytes}
		e.groups.idle = sync.NewCond(&e.groups.mu)
		e.groups.hdr = nats.Header{KeyHeader: e.groups.key}
	}
	opts := []nats.Option{
		nats.Name("coap-server"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// No buffering while disconnected: a publish then fails at once and
		// the uplink gets 5.03, instead of a 2.04 for something not stored.
		nats.ReconnectBufSize(-1),
		nats.Timeout(cfg.ConnectTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			cfg.Logger.Warn("nats: disconnected; uplinks get 5.03 until it is back", "err", err)
		}),
		nats.ReconnectHandler(func(*nats.Conn) { cfg.Logger.Info("nats: reconnected") }),
	}
	var err error
	url := cfg.URL
	if cfg.URL == "" {
		if e.ns, err = startEmbedded(cfg); err != nil {
			return nil, err
		}
		opts = append(opts, nats.InProcessServer(e.ns))
		url = e.ns.ClientURL()
	}
	e.nc, err = nats.Connect(url, append(opts, nats.ClosedHandler(func(*nats.Conn) { close(e.closed) }))...)
	if err == nil {
		e.feed, err = nats.Connect(url, append(opts, nats.Name("coap-server feed"))...)
	}
	if err == nil {
		e.store, err = nats.Connect(url, append(opts, nats.Name("coap-server storage"))...)
	}
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: cannot connect to NATS: %w", e.varName(), err)
	}
	if e.js, err = jetstream.New(e.nc, jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) {
		e.asyncErrors.Add(1)
	})); err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: %w", e.varName(), err)
	}
	// The publishes an answer waits for (publish): acknowledged on their
	// own subscription, so their failures are not counted as LogAsync's.
	if e.acks, err = newAcker(e.nc); err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: %w", e.varName(), err)
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if err := e.ensure(sctx); err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: %w", e.varName(), err)
	}
	if err := e.bind(sctx); err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: %w", e.varName(), err)
	}
	if e.Behind() && cfg.EntriesFollow {
		e.ledger = newLedger()
	}
	return e, nil
}

func (e *Engine) varName() string {
	if e.cfg.URL == "" {
		return "DATA_DIR (embedded NATS)"
	}
	return "NATS_URL"
}

func startEmbedded(cfg Config) (*server.Server, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("DATA_DIR: %w", err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "coap-server",
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		DontListen: true, // reached in-process only
		NoSigs:     true,
		NoLog:      true,
		SyncAlways: cfg.SyncAlways,
		// The file store holds the streams; their own limits bound it.
		JetStreamMaxMemory: 64 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("DATA_DIR: embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(cfg.ConnectTimeout) {
		ns.Shutdown()
		return nil, errors.New("DATA_DIR: embedded NATS did not start (is the store locked by another process?)")
	}
	return ns, nil
}

// ensure creates or updates the streams and the storage consumer.
func (e *Engine) ensure(ctx context.Context) error {
	c := e.cfg
	var err error
	e.live, err = e.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              LiveLogStream,
		Description:       "nbiot-live: live-log entries; the stream sequence is their seq",
		Subjects:          []string{liveSubject + ">"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxAge:            c.LiveMaxAge,
		MaxBytes:          c.LiveBytes,
		MaxMsgsPerSubject: c.LivePerDevice,
		MaxMsgSize:        MaxEntryBytes,
		Duplicates:        c.Duplicates,
		Replicas:          c.Replicas,
		Storage:           jetstream.FileStorage,
		AllowDirect:       true,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", LiveLogStream, err)
	}
	if !c.Storage {
		return nil
	}
	e.uplinks, err = e.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        UplinksStream,
		Description: "nbiot-live: accepted uplinks until the database committed them",
		Subjects:    []string{uplinkSubject + ">"},
		// A work queue: each acknowledged uplink leaves the stream. Trimming
		// a limits stream below the consumer's ack floor instead would
		// take the per-ack deletions off the publish path, but lost
		// in-flight uplinks of a killed instance on nats-server 2.9
		// (TestThreeInstancesOnOneNATS), so it is not done.
		Retention: jetstream.WorkQueuePolicy,
		// Full means 5.03 for new uplinks, never dropping accepted ones.
		Discard:    jetstream.DiscardNew,
		MaxBytes:   c.UplinksBytes,
		MaxMsgSize: int32(max(maxBatchBytes, uplink.MaxMessageLen+binary.MaxVarintLen32)),
		Duplicates: c.Duplicates,
		Replicas:   c.Replicas,
		Storage:    jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", UplinksStream, err)
	}
	_, err = e.uplinks.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:     StorageConsumer,
		Description: "nbiot-live: the database writers of every instance",
		AckPolicy:   jetstream.AckExplicitPolicy,
		// Workers extend it with InProgress while they retry, so a slow
		// database causes no redelivery, while a dead instance's batch
		// returns to the others after RedeliverAfter.
		AckWait:       c.RedeliverAfter,
		MaxDeliver:    -1,
		MaxAckPending: 20000,
		MaxWaiting:    512,
		Replicas:      c.Replicas,
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", StorageConsumer, err)
	}
	return nil
}

// bind gives the feed and storage connections their own stream handles.
func (e *Engine) bind(ctx context.Context) error {
	var err error
	if e.feedJS, err = jetstream.New(e.feed); err != nil {
		return err
	}
	if e.feedLive, err = e.feedJS.Stream(ctx, LiveLogStream); err != nil {
		return fmt.Errorf("stream %s: %w", LiveLogStream, err)
	}
	if e.uplinks == nil {
		return nil
	}
	storeJS, err := jetstream.New(e.store)
	if err != nil {
		return err
	}
	if e.storeUplink, err = storeJS.Stream(ctx, UplinksStream); err != nil {
		return fmt.Errorf("stream %s: %w", UplinksStream, err)
	}
	return nil
}

// Connected reports whether all three connections are up (for /readyz):
// publishes, the live-log feed and history, and storage.
func (e *Engine) Connected() bool {
	if e == nil {
		return false
	}
	for _, c := range []*nats.Conn{e.nc, e.feed, e.store} {
		if c == nil || !c.IsConnected() {
			return false
		}
	}
	return true
}

// Embedded reports whether the engine runs in-process.
func (e *Engine) Embedded() bool { return e.ns != nil }

// Close drains the connection (pending acks are delivered) and stops the
// embedded server. It is idempotent.
func (e *Engine) Close() {
	e.FlushLive(5 * time.Second)
	for _, c := range []*nats.Conn{e.store, e.feed} {
		if c != nil && !c.IsClosed() {
			c.Close()
		}
	}
	if e.nc != nil && !e.nc.IsClosed() {
		if e.nc.Drain() == nil {
			select {
			case <-e.closed:
			case <-time.After(5 * time.Second):
			}
		}
		e.nc.Close()
	}
	if e.acks != nil {
		e.acks.close()
	}
	if e.ns != nil {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	}
}
