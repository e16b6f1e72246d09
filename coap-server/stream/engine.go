package stream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
)

// Engine is the connection to JetStream and the streams.
//
// It holds three connections, so that no kind of traffic queues behind
// another on one socket: publishes from the datagram path (nc), the
// live-log feed and history (feed), and the storage consumer's fetches
// and acknowledgements (store). Each has its own handles on the streams.
type Engine struct {
	cfg     Config
	ns      *server.Server // nil with an external NATS_URL
	unlock  func()         // releases DATA_DIR's lock (lock.go); nil with NATS_URL
	nc      *nats.Conn
	js      jetstream.JetStream
	acks    *acker           // the publishes an answer waits for
	uplinks jetstream.Stream // nil without storage
	live    jetstream.Stream

	feed        *nats.Conn
	feedJS      jetstream.JetStream
	feedLive    jetstream.Stream
	store       *nats.Conn
	storeJS     jetstream.JetStream // nil without storage
	storeUplink jetstream.Stream    // nil without storage

	batches batcher       // of UPLINKS publishes
	groups  *liveGroups   // of LIVELOG publishes, embedded; nil with NATS_URL
	ledger  *ledger       // entries owed to accepted uplinks, when Behind (ledger.go)
	devices *deviceBudget // nil with NATS_URL
	closed  chan struct{} // closed by the publish connection's ClosedHandler
	// asyncErrors counts LogAsync and LogBehind publishes that failed.
	asyncErrors atomic.Int64
	// authErrors counts the server's refusals of our credentials on all
	// three connections, each of which keeps its own (refused.go).
	authErrors               atomic.Int64
	permErrors               atomic.Int64 // permission violations (PermissionErrors)
	ncAuth, feedAuth, stAuth refusals
	behindWaits              atomic.Int64 // LogBehind callers that waited (BehindWaits)

	// liveTop is the newest LIVELOG position the watcher saw (noteLiveTop):
	// a LIVELOG made again continues above it (startAt).
	liveTop atomic.Uint64
	// disconnects counts the connection's losses: a look at JetStream
	// that one interrupted does not make the engine ready.
	disconnects atomic.Uint64
	// What the watcher (watch) last found.
	jsReady   atomic.Bool   // the streams and the consumer answer (Ready)
	clamped   atomic.Bool   // UPLINKS kept a larger limit than UPLINKS_MAX_BYTES (ensureStream)
	kick      chan struct{} // a connection is back: check now
	failed    chan error    // the embedded store is broken for good (Failed)
	failOnce  sync.Once
	watchCtx  context.Context
	stopWatch context.CancelFunc // ends watch (Close)
	watched   chan struct{}      // closed when watch returned; nil before it started
}

// AuthErrors is the number of times the server refused the credentials
// (NATS_CREDS, NATS_CERT, NATS_URL's user) while running; each time the
// connection tries again (refused.go).
func (e *Engine) AuthErrors() int64 { return e.authErrors.Load() }

// PermissionErrors is the number of publishes and subscriptions the
// server refused coap-server's user (a permissions violation: refused.go).
func (e *Engine) PermissionErrors() int64 { return e.permErrors.Load() }

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
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, closed: make(chan struct{}), kick: make(chan struct{}, 1), failed: make(chan error, 1)}
	e.watchCtx, e.stopWatch = context.WithCancel(context.Background())
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
		// No buffering while disconnected: a publish then fails at once and
		// the uplink gets 5.03, instead of a 2.04 for something not stored.
		nats.ReconnectBufSize(-1),
		nats.Timeout(cfg.ConnectTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			// Not ready until the watcher found the streams again: the
			// server that comes back may not have them. A look that was
			// under way meanwhile does not count (disconnects).
			e.disconnects.Add(1)
			e.jsReady.Store(false)
			if err == nil {
				return // our own Close (shutdown): nothing to warn about
			}
			cfg.Logger.Warn("nats: disconnected; uplinks get 5.03 until it is back", "err", err)
		}),
	}
	reconnected := func() {
		cfg.Logger.Info("nats: reconnected")
		e.checkSoon()
	}
	conn := func(r *refusals, name string, more ...nats.Option) []nats.Option {
		*r = refusals{name: name, log: cfg.Logger, total: &e.authErrors, denied: &e.permErrors}
		return append(append(append([]nats.Option(nil), opts...), r.options(reconnected)...), more...)
	}
	auth, err := cfg.authOptions()
	if err != nil {
		return nil, err
	}
	opts = append(opts, auth...)
	url := cfg.URL
	if cfg.URL == "" {
		if e.ns, e.unlock, err = startEmbedded(cfg); err != nil {
			return nil, err
		}
		opts = append(opts, nats.InProcessServer(e.ns))
		url = e.ns.ClientURL()
	}
	e.nc, err = nats.Connect(url, conn(&e.ncAuth, "publish", nats.ClosedHandler(func(*nats.Conn) { close(e.closed) }))...)
	if err == nil {
		e.feed, err = nats.Connect(url, conn(&e.feedAuth, "feed", nats.Name("coap-server feed"))...)
	}
	if err == nil {
		e.store, err = nats.Connect(url, conn(&e.stAuth, "storage", nats.Name("coap-server storage"))...)
	}
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: cannot connect to NATS: %w%s", e.varName(), err, connectHint(err))
	}
	if e.js, err = jetstream.New(e.nc, jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) {
		e.asyncErrors.Add(1)
	}),
		// LogAsync's publishes (NATS_URL) whose acknowledgement never
		// comes (a reply lost in a leader change, a subject nobody stores)
		// are given up and counted after this, instead of filling the
		// publisher's 4,000 pending for good.
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout)); err != nil {
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
	if e.live, e.uplinks, err = e.ensure(sctx); err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: %w", e.varName(), err)
	}
	if n, err := e.redeliverOrphans(sctx); err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: %w", e.varName(), err)
	} else if n > 0 {
		cfg.Logger.Info("storage: uplinks fetched by a process that ended before storing them are delivered again now", "messages", n)
	}
	if info := e.live.CachedInfo(); info != nil {
		e.noteLiveTop(info.State.LastSeq)
	}
	if err := e.bind(sctx); err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: %w", e.varName(), err)
	}
	if e.Behind() && cfg.EntriesFollow {
		e.ledger = newLedger()
	}
	e.jsReady.Store(true)
	e.watched = make(chan struct{})
	go e.watch()
	return e, nil
}

func (e *Engine) varName() string {
	if e.cfg.URL == "" {
		return "DATA_DIR (embedded NATS)"
	}
	return "NATS_URL"
}

// startEmbedded starts the embedded server on DATA_DIR, holding its lock
// (lock.go); unlock releases it once the server is shut down.
func startEmbedded(cfg Config) (ns *server.Server, unlock func(), err error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("DATA_DIR: %w", err)
	}
	release, err := lockDir(cfg.DataDir)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	maxStore, err := cfg.storeFits(cfg.DataDir)
	if err != nil {
		return nil, nil, err
	}
	ns, err = server.NewServer(&server.Options{
		ServerName: "coap-server",
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		DontListen: true, // reached in-process only
		NoSigs:     true,
		NoLog:      true,
		SyncAlways: cfg.SyncAlways,
		// The file store holds the streams; their own limits bound it
		// (disk.go), not the server's guess at three quarters of the disk.
		JetStreamMaxStore:  maxStore,
		JetStreamMaxMemory: 64 << 20,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("DATA_DIR: embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(cfg.ConnectTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, nil, fmt.Errorf("DATA_DIR: embedded NATS did not start within %s", cfg.ConnectTimeout)
	}
	return ns, release, nil
}

// liveConfig is LIVELOG's configuration.
func (c Config) liveConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
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
	}
}

// uplinksConfig is UPLINKS' configuration.
func (c Config) uplinksConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
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
	}
}

// ensure creates the streams and the storage consumer, or brings them to
// the configuration without deleting what UPLINKS holds (ensureStream),
// and returns the streams' handles (uplinks nil without storage). Open
// runs it, and the watcher again when NATS lost a stream or the consumer.
// Doing so again with the same configuration changes nothing.
func (e *Engine) ensure(ctx context.Context) (live, uplinks jetstream.Stream, err error) {
	c := e.cfg
	if live, err = e.ensureStream(ctx, c.liveConfig(), nil); err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", LiveLogStream, e.ensureHint(ctx, err))
	}
	if !c.Storage {
		return live, nil, nil
	}
	if uplinks, err = e.ensureStream(ctx, c.uplinksConfig(), e.keepUplinks); err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", UplinksStream, e.ensureHint(ctx, err))
	}
	_, err = uplinks.CreateOrUpdateConsumer(ctx, e.storageConsumerConfig(StorageConsumer, storageDescription, uplinks))
	if err != nil {
		return nil, nil, fmt.Errorf("consumer %s: %w", StorageConsumer, err)
	}
	if err := e.ensureAside(ctx); err != nil {
		err = e.ensureHint(ctx, err)
		e.cfg.Logger.Warn("nats: cannot make "+AsideStream+": messages this version cannot read wait in UPLINKS instead (see the README, Durability)", "err", err)
	}
	return live, uplinks, nil
}

// The storage consumers' descriptions.
const (
	storageDescription = "nbiot-live: the database writers of every instance"
	asideDescription   = "nbiot-live: the database writers of every instance, for what a coap-server could not read"
)

// storageMaxAckPending bounds the messages the storage consumers may hold
// unacknowledged, every instance's fetches together. A variable for tests.
var storageMaxAckPending = 20000

// storageConsumerConfig is the configuration of a durable consumer of
// stream s by the database writers.
func (e *Engine) storageConsumerConfig(name, description string, s jetstream.Stream) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:     name,
		Description: description,
		AckPolicy:   jetstream.AckExplicitPolicy,
		// Workers extend it with InProgress while they retry, so a slow
		// database causes no redelivery, while a dead instance's batch
		// returns to the others after RedeliverAfter.
		AckWait:       e.cfg.RedeliverAfter,
		MaxDeliver:    -1,
		MaxAckPending: storageMaxAckPending,
		MaxWaiting:    512,
		// The stream's own, which may be more than NATS_REPLICAS (never
		// lowered: ensureStream).
		Replicas: s.CachedInfo().Config.Replicas,
	}
}

// uplinksMargin is what UPLINKS may take between ensureStream reading its
// state and its update (see keepUplinks), beyond a sixteenth of what it holds.
const uplinksMargin = 256 << 10

// ensureStream creates the stream want names, or updates it to want when
// that differs from what it has, never lowering its replicas. An update
// of a stream of accepted uplinks (keep: keepUplinks for UPLINKS, keepAll
// for UPLINKS_UNREADABLE) also never tightens a limit in a way that would
// delete them: nats-server enforces a lowered MaxBytes, MaxAge, MaxMsgs or
// MaxMsgsPerSubject on update by deleting the oldest messages, even with
// DiscardNew. LIVELOG's limits are its
// retention: lowering LIVELOG_MAX_BYTES, LIVELOG_MAX_AGE or
// LIVELOG_PER_DEVICE deletes its oldest entries, as asked; that is logged.
func (e *Engine) ensureStream(ctx context.Context, want jetstream.StreamConfig, keep func(*jetstream.StreamInfo, *jetstream.StreamConfig)) (jetstream.Stream, error) {
	log := e.cfg.Logger
	for range 3 {
		s, err := e.js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			again := e.watched != nil // the watcher: NATS lost it
			first := uint64(0)
			if top := e.liveTop.Load(); again && want.Name == LiveLogStream && top > 0 {
				first = top + liveSeqGap
			}
			if first > 0 {
				s, err = e.createAt(ctx, want, first)
			} else {
				s, err = e.js.CreateStream(ctx, want)
			}
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				continue // another instance created it meanwhile: update that one
			}
			if err == nil {
				if again {
					log.Warn("nats: stream was missing and was created again, empty; what NATS held in it before is gone", "stream", want.Name, "first_seq", first)
				} else {
					log.Info("nats: stream created", "stream", want.Name)
				}
			}
			return s, err
		}
		if err != nil {
			return nil, err
		}
		info := s.CachedInfo()
		if beingMadeAgain(info) {
			if err := e.awaitMadeAgain(ctx, info); err != nil {
				return nil, err
			}
			continue
		}
		if want = e.safeConfig(info, want, keep); sameConfig(info.Config, want) {
			return s, nil
		}
		return e.js.UpdateStream(ctx, want)
	}
	return nil, errors.New("created and deleted again by someone else, three times")
}

// liveSeqGap is how far above the newest position the engine saw a
// LIVELOG that NATS lost starts again: past any entry published since its
// last look (every checkEvery, at up to half a million entries a second).
const liveSeqGap = 1 << 20

// renumberSubject is what a stream being made again listens on until its
// first position is set: nobody publishes there.
const renumberSubject = "nbiot.renumbering"

// renumbering, set by tests only, runs in createAt between the stream's
// creation and its first position.
var renumbering func()

// createAt creates the stream want whose first message will be number
// first: a LIVELOG that NATS lost (restarted without its store) and that
// is made again continues the positions clients hold, instead of starting
// at 1, where every client resuming with since, every /ws subscriber's
// gate and every relay would take the new entries for ones already sent,
// and drop them until the positions passed the old ones. nats-server 2.10
// and later take StreamConfig.FirstSeq; 2.9 ignores it, and a purge up to
// first does the same. The stream listens on renumberSubject until then, so
// that no entry is stored (and acknowledged) before the purge could delete
// it; then it takes its subjects. If that fails it is deleted again, to be
// made again by the next look.
func (e *Engine) createAt(ctx context.Context, want jetstream.StreamConfig, first uint64) (jetstream.Stream, error) {
	subjects := want.Subjects
	want.Subjects, want.FirstSeq = []string{renumberSubject}, first
	s, err := e.js.CreateStream(ctx, want)
	if err != nil {
		return nil, err
	}
	if renumbering != nil {
		renumbering()
	}
	if info := s.CachedInfo(); info == nil || info.State.FirstSeq < first {
		err = s.Purge(ctx, jetstream.WithPurgeSequence(first))
	}
	if err == nil {
		want.Subjects = subjects
		s, err = e.js.UpdateStream(ctx, want)
	}
	if err != nil {
		_ = e.js.DeleteStream(ctx, want.Name)
		return nil, fmt.Errorf("continue the positions at %d: %w", first, err)
	}
	return s, nil
}

// errBeingMadeAgain: the stream listens on renumberSubject, made again by
// createAt (here or on another instance) and its first position not yet set.
var errBeingMadeAgain = errors.New("being made again, its first position not yet set")

// abandonAfter is how long a stream may listen on renumberSubject before
// it is taken for one whose maker stopped in between (createAt takes
// milliseconds). A variable for tests.
var abandonAfter = time.Minute

func beingMadeAgain(info *jetstream.StreamInfo) bool {
	return info != nil && slices.Equal(info.Config.Subjects, []string{renumberSubject})
}

// awaitMadeAgain waits while the stream info describes is being made again
// by another instance (createAt). One left so for abandonAfter was made by
// an instance that stopped in between: it holds nothing (nobody publishes
// to renumberSubject), so it is deleted, for the caller to make it again.
// Left alone, it took no entry for good: every look found it there.
func (e *Engine) awaitMadeAgain(ctx context.Context, info *jetstream.StreamInfo) error {
	name := info.Config.Name
	for beingMadeAgain(info) {
		if time.Since(info.Created) >= abandonAfter {
			e.cfg.Logger.Warn("nats: stream left half made by an instance that stopped; making it again", "stream", name)
			if err := e.js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				return err
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (by another instance): %w", errBeingMadeAgain, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		s, err := e.js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		info = s.CachedInfo()
	}
	return nil
}

// safeConfig is want, the configuration for the stream that info
// describes, changed so that the update deletes nothing it must not: the
// replicas are never lowered, and for a stream of accepted uplinks (keep)
// none is deleted. LIVELOG's (keep nil) lowered limits are applied and logged.
func (e *Engine) safeConfig(info *jetstream.StreamInfo, want jetstream.StreamConfig, keep func(*jetstream.StreamInfo, *jetstream.StreamConfig)) jetstream.StreamConfig {
	log := e.cfg.Logger
	cur := info.Config
	if cur.Replicas > want.Replicas {
		log.Warn("NATS_REPLICAS is below the stream's replicas: keeping them (lower them on the cluster, e.g. nats stream edit, not with a deploy)",
			"stream", want.Name, "NATS_REPLICAS", want.Replicas, "replicas", cur.Replicas)
		want.Replicas = cur.Replicas
	}
	if keep != nil {
		keep(info, &want)
		return want
	}
	for _, l := range []struct {
		name      string
		cur, want int64
	}{
		{"LIVELOG_MAX_BYTES", cur.MaxBytes, want.MaxBytes},
		{"LIVELOG_MAX_AGE", int64(cur.MaxAge), int64(want.MaxAge)},
		{"LIVELOG_PER_DEVICE", cur.MaxMsgsPerSubject, want.MaxMsgsPerSubject},
	} {
		if tighter(l.cur, l.want) && info.State.Msgs > 0 {
			log.Info("live log: "+l.name+" lowered; its oldest entries beyond the new bound are deleted (their uplinks stay stored)",
				"stream", want.Name, "was", l.cur, "now", l.want)
		}
	}
	return want
}

// keepUplinks changes want, UPLINKS' configuration, so that updating the
// stream that info describes deletes none of the accepted uplinks it holds:
// no limit is tightened but MaxBytes, and that one not below what it
// holds (plus a margin for what arrives meanwhile). So an operator who
// lowers UPLINKS_MAX_BYTES while the database is down loses nothing and
// keeps the service up: the stream stops growing, new uplinks get 5.03
// once it is full, and the watcher lowers the limit further as the stream
// drains, down to UPLINKS_MAX_BYTES (e.clamped). Refusing to start
// instead would turn away every uplink for the length of the outage.
func (e *Engine) keepUplinks(info *jetstream.StreamInfo, want *jetstream.StreamConfig) {
	cur := info.Config
	keepAgeAndCounts(cur, want)
	clamped := false
	if tighter(cur.MaxBytes, want.MaxBytes) {
		held := int64(min(info.State.Bytes, math.MaxInt64/2))
		if floor := held + held/16 + uplinksMargin; floor > want.MaxBytes {
			limit := floor
			if cur.MaxBytes > 0 {
				limit = min(limit, cur.MaxBytes)
			}
			if !e.clamped.Load() {
				e.cfg.Logger.Warn("UPLINKS_MAX_BYTES is below what the UPLINKS stream holds (accepted uplinks the database has not stored yet): "+
					"keeping a larger limit, since NATS would delete the oldest of them to enforce it; it is lowered as the stream drains",
					"UPLINKS_MAX_BYTES", want.MaxBytes, "held_bytes", held, "limit_bytes", limit)
			}
			want.MaxBytes = limit
			clamped = true
		}
	}
	if e.clamped.Swap(clamped) && !clamped {
		e.cfg.Logger.Info("UPLINKS_MAX_BYTES applies again: the UPLINKS stream drained below it", "UPLINKS_MAX_BYTES", want.MaxBytes)
	}
}

// keepAgeAndCounts keeps cur's MaxAge, MaxMsgs and MaxMsgsPerSubject in
// want where want's are tighter.
func keepAgeAndCounts(cur jetstream.StreamConfig, want *jetstream.StreamConfig) {
	if tighter(int64(cur.MaxAge), int64(want.MaxAge)) {
		want.MaxAge = cur.MaxAge
	}
	if tighter(cur.MaxMsgs, want.MaxMsgs) {
		want.MaxMsgs = cur.MaxMsgs
	}
	if tighter(cur.MaxMsgsPerSubject, want.MaxMsgsPerSubject) {
		want.MaxMsgsPerSubject = cur.MaxMsgsPerSubject
	}
}

// tighter reports whether limit want is below cur (0 or less: none).
func tighter(cur, want int64) bool {
	return want > 0 && (cur <= 0 || want < cur)
}

// sameConfig reports whether the stream configured cur already has what
// want sets (the server writes "no limit" as -1 where want has 0).
func sameConfig(cur, want jetstream.StreamConfig) bool {
	lim := func(v int64) int64 { return max(v, 0) }
	return cur.Description == want.Description && slices.Equal(cur.Subjects, want.Subjects) &&
		cur.Retention == want.Retention && cur.Discard == want.Discard && cur.Storage == want.Storage &&
		cur.MaxAge == want.MaxAge && lim(cur.MaxBytes) == lim(want.MaxBytes) && lim(cur.MaxMsgs) == lim(want.MaxMsgs) &&
		lim(cur.MaxMsgsPerSubject) == lim(want.MaxMsgsPerSubject) && max(cur.MaxMsgSize, 0) == max(want.MaxMsgSize, 0) &&
		cur.Duplicates == want.Duplicates && cur.Replicas == want.Replicas && cur.AllowDirect == want.AllowDirect
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
	if e.storeJS, err = jetstream.New(e.store); err != nil {
		return err
	}
	if e.storeUplink, err = e.storeJS.Stream(ctx, UplinksStream); err != nil {
		return fmt.Errorf("stream %s: %w", UplinksStream, err)
	}
	return nil
}

// Connected reports whether all three connections are up: publishes,
// the live-log feed and history, and storage.
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

// Ready reports whether uplinks can be accepted (for /readyz): the three
// connections are up, and JetStream answered the watcher's last look at
// the streams and the storage consumer (every checkEvery, and at once
// after a reconnection). When NATS came back without them (restarted
// without its store, a stream deleted) it is false until the watcher has
// created them again; while JetStream does not answer (quorum lost) it
// stays false.
func (e *Engine) Ready() bool {
	return e != nil && e.jsReady.Load() && e.Connected()
}

// How often the watcher looks at JetStream, and the least time between
// two of its attempts to create what is missing; while UPLINKS keeps a
// larger limit than UPLINKS_MAX_BYTES, how often it tries to lower it.
const (
	checkEvery  = 2 * time.Second
	ensureEvery = 5 * time.Second
	lowerEvery  = 30 * time.Second
)

// checkSoon makes the watcher look now (a connection is back).
func (e *Engine) checkSoon() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// watch keeps Ready true to JetStream and recreates the streams and the
// storage consumer when NATS lost them (ensure, at most every
// ensureEvery). The handles the engine and its UplinkSource hold name
// the stream and the consumer, so they work again on the new ones.
func (e *Engine) watch() {
	defer close(e.watched)
	log := e.cfg.Logger
	t := time.NewTicker(checkEvery)
	defer t.Stop()
	var lastEnsure, lastLower time.Time
	failedEnsures := 0
	warned := false
	broken := 0 // looks in a row that found the embedded store broken
	for {
		select {
		case <-e.watchCtx.Done():
			return
		case <-t.C:
		case <-e.kick:
		}
		gen := e.disconnects.Load()
		err := e.check()
		if e.ns != nil && (errors.Is(err, errJetStreamStopped) || errors.Is(err, errStoreStuck)) {
			if broken++; broken == fatalLooks {
				e.fail(fmt.Errorf("DATA_DIR %s: %w", e.cfg.DataDir, err))
			}
		} else {
			broken = 0
		}
		if err != nil && missing(err) && time.Since(lastEnsure) >= ensureEvery {
			lastEnsure = time.Now()
			ctx, cancel := context.WithTimeout(e.watchCtx, e.cfg.ConnectTimeout)
			_, _, eerr := e.ensure(ctx)
			cancel()
			if eerr == nil {
				failedEnsures = 0
				err = e.check()
			} else if failedEnsures++; failedEnsures == 1 || failedEnsures%12 == 0 {
				log.Warn("nats: cannot create the missing streams again; retrying", "attempt", failedEnsures, "err", eerr)
			}
		}
		if err == nil && e.clamped.Load() && time.Since(lastLower) >= lowerEvery {
			lastLower = time.Now()
			ctx, cancel := context.WithTimeout(e.watchCtx, e.cfg.ConnectTimeout)
			if _, lerr := e.ensureStream(ctx, e.cfg.uplinksConfig(), e.keepUplinks); lerr != nil {
				log.Warn("nats: cannot lower UPLINKS' limit towards UPLINKS_MAX_BYTES", "err", lerr)
			}
			cancel()
		}
		if err == nil && e.disconnects.Load() != gen {
			err = errDisconnected // disconnected during the look: look again
			e.checkSoon()
		}
		was := e.jsReady.Swap(err == nil)
		if err == nil && e.disconnects.Load() != gen {
			// The connection went away as the look ended: its handler's
			// false may have come before this true.
			e.jsReady.Store(false)
			err = errDisconnected
			e.checkSoon()
		}
		switch {
		case err != nil && !warned && !errors.Is(err, errDisconnected) && e.watchCtx.Err() == nil:
			warned = true
			log.Warn("nats: JetStream does not serve the streams; not ready, uplinks get 5.03", "err", err)
		case err == nil && (!was || warned):
			warned = false
			log.Info("nats: JetStream serves the streams; ready")
		}
	}
}

// With the embedded server, publishes that the stream gives no answer for
// storeStuckAfter, storeStuckFailures of them at least and none answered
// in between, mean its store takes no writes: nats-server keeps a file
// store's first write error (a full disk: ENOSPC) and fails every write
// after it, even once there is room again, until it starts again. A
// busy machine answers some. Variables for tests.
var (
	storeStuckAfter    = 30 * time.Second
	storeStuckFailures = int64(3)
)

// fatalLooks is how many looks in a row (checkEvery apart) must find the
// embedded store broken before the engine gives up (Failed).
const fatalLooks = 3

// Failed delivers, once, why the embedded server's store can no longer
// take uplinks (JetStream stopped, or every write refused: a full disk):
// only starting the process again recovers it, so the program should exit
// (a platform restarts it; at start DATA_DIR is checked). Never with
// NATS_URL, where the cluster recovers on its own.
func (e *Engine) Failed() <-chan error { return e.failed }

// fail reports err on Failed, once.
func (e *Engine) fail(err error) {
	e.failOnce.Do(func() { e.failed <- err })
}

var (
	errDisconnected     = errors.New("nats: not connected")
	errJetStreamStopped = errors.New("embedded NATS: JetStream stopped (a storage failure? see DATA_DIR)")
	errStoreStuck       = errors.New("embedded NATS: the store takes no writes (a full disk? see DATA_DIR)")
)

// check asks JetStream for the streams and the storage consumer. The
// embedded server holds them for this process alone (it does not listen),
// so there it is only asked whether JetStream runs (it stops on a storage
// failure): a stream info of LIVELOG every few seconds slowed its writes
// at the limit of an fsync per message (TestLogBehindWithSyncAlwaysLosesNoEntry).
func (e *Engine) check() error {
	if !e.Connected() {
		return errDisconnected
	}
	if e.ns != nil {
		if !e.ns.JetStreamEnabled() {
			return errJetStreamStopped
		}
		if since, n := e.acks.failing(time.Now()); since >= storeStuckAfter && n >= storeStuckFailures {
			return fmt.Errorf("%w: %d publishes in %v given up, none acknowledged", errStoreStuck, n, since.Round(time.Second))
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(e.watchCtx, e.cfg.AckTimeout)
	defer cancel()
	live, err := e.js.Stream(ctx, LiveLogStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", LiveLogStream, err)
	}
	if info := live.CachedInfo(); info != nil {
		if beingMadeAgain(info) {
			// Not ready: it takes no entry yet. missing, so that the
			// watcher makes again one whose maker stopped (awaitMadeAgain).
			return fmt.Errorf("stream %s: %w", LiveLogStream, errBeingMadeAgain)
		}
		e.noteLiveTop(info.State.LastSeq)
	}
	if e.uplinks == nil {
		return nil
	}
	if _, err := e.js.Stream(ctx, UplinksStream); err != nil {
		return fmt.Errorf("stream %s: %w", UplinksStream, err)
	}
	if _, err := e.js.Consumer(ctx, UplinksStream, StorageConsumer); err != nil {
		return fmt.Errorf("consumer %s: %w", StorageConsumer, err)
	}
	return nil
}

// noteLiveTop records seq as a LIVELOG position seen.
func (e *Engine) noteLiveTop(seq uint64) {
	for {
		top := e.liveTop.Load()
		if seq <= top || e.liveTop.CompareAndSwap(top, seq) {
			return
		}
	}
}

// missing reports whether err says that what ensure makes is not there
// (rather than that JetStream did not answer in time).
func missing(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, errBeingMadeAgain) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount)
}

// Embedded reports whether the engine runs in-process.
func (e *Engine) Embedded() bool { return e.ns != nil }

// Close drains the connection (pending acks are delivered) and stops the
// embedded server. It is idempotent.
func (e *Engine) Close() {
	e.stopWatch()
	if e.watched != nil {
		<-e.watched
	}
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
	if e.unlock != nil {
		e.unlock()
		e.unlock = nil
	}
}
