// Package app wires coap-server: CoAP listeners, the live-log hub, storage
// and the HTTP side. main only reads the configuration and handles signals;
// tests run the whole program with 127.0.0.1:0 addresses.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/nbiot-live/nbiot-live/coap-server/devset"
	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/coap-server/httpapi"
	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/internal/connlimit"
	"github.com/nbiot-live/nbiot-live/internal/lifecycle"
	"github.com/nbiot-live/nbiot-live/internal/memlimit"
	"github.com/nbiot-live/nbiot-live/internal/supa"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

// App is one coap-server process.
type App struct {
	cfg     Config
	log     *slog.Logger
	Metrics *prometheus.Registry

	hub     *hub.Hub
	handler *ingest.Handler
	engine  *stream.Engine
	feeder  *hub.Feeder
	store   *storeConsumer // nil without storage

	coap   *ingest.LeanServer // plain CoAP: the lean datagram path
	coapLn *net.UDPConn

	coaps     *dtls.Server      // nil unless COAPS_ADDR
	closeSets []func()          // stop the device sets and the PSK cache, release their pools
	downlinks *downlink.Service // nil without storage
	httpAPI   *httpapi.Server
	httpSrv   *http.Server
	httpLn    net.Listener
	metSrv    *http.Server // nil when METRICS_ADDR is off or its default was taken
	metLn     net.Listener

	ready    atomic.Bool
	wg       sync.WaitGroup
	stopMove func() // stops moving the embedded store's uplinks to NATS_URL
	shutOnce sync.Once
	shutErr  error
}

// New builds the program from cfg without binding anything.
func New(cfg Config, logger *slog.Logger) *App {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a := &App{cfg: cfg, log: logger, Metrics: reg}
	a.hub = hub.New(hub.NewMetrics(reg))
	// With the embedded server, Dedup is the only memory of recent
	// uplinks (see ingest.Dedup): strict, and restored at start.
	dedup := ingest.NewStrictDedup(ingest.EmbeddedDedupBytes(), ingest.ExchangeLifetime)
	if cfg.Stream.URL != "" {
		dedup = ingest.NewDedup(ingest.DefaultDedupBytes(), ingest.ExchangeLifetime)
	}
	a.handler = &ingest.Handler{
		Logger:     logger,
		Metrics:    ingest.NewMetrics(reg),
		MaxPayload: cfg.MaxPayload,
		Dedup:      dedup,
		Refusals:   ingest.NewDedup(ingest.DefaultRefusalBytes(), ingest.ExchangeLifetime),
	}
	// What waits for /ws subscribers (the relay's links), together: a
	// thirty-second of the memory (12.5 MiB at GOMEMLIMIT=400MiB).
	queued := wspeer.NewBudget(ingest.ProcessMemory() / 32)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nbiot_ws_queued_bytes",
		Help: "Bytes of frames waiting to be written to /ws subscribers (JSON plus 400 B a frame, once per subscriber), at most a thirty-second of the memory.",
	}, func() float64 { return float64(queued.Used()) }))
	a.httpAPI = &httpapi.Server{
		Hub:           a.hub,
		Token:         cfg.WSToken,
		PreviousToken: cfg.WSTokenPrevious,
		Ready:         a.Ready,
		Gatherer:      reg,
		Metrics:       httpapi.NewMetrics(reg),
		Logger:        logger,
		Peer:          wspeer.Config{Budget: queued},
	}
	return a
}

// Start opens storage and binds the listeners. On error, what was opened is closed.
func (a *App) Start(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			_ = a.Shutdown(context.Background())
		}
	}()
	if err := a.openStream(ctx); err != nil {
		return err
	}
	if err := a.openStorage(ctx); err != nil {
		return err
	}
	if err := a.openDownlinks(ctx); err != nil {
		return err
	}
	if err := a.openRegistered(ctx); err != nil {
		return err
	}
	if err := a.openCoAPS(ctx); err != nil {
		return err
	}
	if a.cfg.CoAPAddr != "off" {
		ua, err := net.ResolveUDPAddr("udp", a.cfg.CoAPAddr)
		if err != nil {
			return fmt.Errorf("COAP_ADDR: %w", err)
		}
		if a.coapLn, err = net.ListenUDP("udp", ua); err != nil {
			return fmt.Errorf("COAP_ADDR: listen: %w", err)
		}
		if a.coap, err = ingest.NewLeanServer(a.handler, a.coapLn, ingest.LeanConfig{Logger: a.log, Metrics: ingest.NewLeanMetrics(a.Metrics)}); err != nil {
			return fmt.Errorf("COAP_ADDR: %w", err)
		}
		a.serve("coap", a.coap.Serve)
		a.log.Info("coap listening", "addr", a.coapLn.LocalAddr().String())
	}
	ln, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR: listen: %w", err)
	}
	conns := a.cfg.HTTPConnections
	if conns <= 0 {
		conns = connlimit.Share(memlimit.Bytes(), 32)
	}
	a.httpLn = connlimit.New(ln, conns, connlimit.NewMetrics(a.Metrics, "nbiot"))
	a.httpSrv = httpapi.NewHTTPServer(a.httpAPI.Handler(), a.log)
	a.serve("http", func() error { return a.httpSrv.Serve(a.httpLn) })
	a.log.Info("http listening", "addr", a.httpLn.Addr().String())
	if a.cfg.WSTokenPrevious != "" {
		a.log.Warn("ws: WS_TOKEN_PREVIOUS is accepted on /ws besides WS_TOKEN; unset it once every subscriber uses WS_TOKEN (nbiot_ws_previous_token_total stops growing)")
	}
	if err := a.listenMetrics(); err != nil {
		return err
	}
	a.ready.Store(true)
	return nil
}

// restoreDedup gives Dedup the uplinks the live log took within the last
// EXCHANGE_LIFETIME, before a restart: a copy of one of them that reaches
// this process now is answered 2.04 and makes nothing twice. It runs
// before the CoAP listener is bound.
func (a *App) restoreDedup(ctx context.Context) (int, error) {
	now := time.Now()
	restored := 0
	_, err := a.engine.RecentKeys(ctx, now.Add(-ingest.ExchangeLifetime), func(key [16]byte, seq uint64, at time.Time) {
		if a.handler.Dedup.Restore(key, seq, at, now) {
			restored++
		}
	})
	if err != nil {
		return 0, fmt.Errorf("live log: reading the recent uplinks: %w", err)
	}
	// Uplinks answered just before a crash whose entries were not stored
	// yet get them now, and are remembered with them.
	recovered, err := a.engine.RecoverEntries(ctx, func(key [16]byte, seq uint64, at time.Time) {
		if a.handler.Dedup.Restore(key, seq, at, now) {
			restored++
		}
	})
	if err != nil {
		return 0, err
	}
	if recovered > 0 {
		a.log.Warn("live log: entries of uplinks answered before a crash logged now", "entries", recovered)
	}
	return restored, nil
}

// openStream opens the engine (embedded, or NATS_URL) and feeds the hub
// from the live log, so /ws carries every instance's entries.
func (a *App) openStream(ctx context.Context) error {
	if a.cfg.StorageQueueSet {
		a.log.Warn("STORAGE_QUEUE_SIZE is no longer used: uplinks wait for the database in the UPLINKS stream (UPLINKS_MAX_BYTES)")
	}
	sc := a.cfg.Stream
	sc.Storage = a.cfg.Storage() != StorageNone
	sc.EntriesFollow = true // the handler logs each accepted uplink's entry
	sc.Logger = a.log
	e, err := stream.Open(ctx, sc)
	if err != nil {
		return err
	}
	a.engine = e
	a.handler.Stream = e
	a.httpAPI.History = e
	if !e.Embedded() && e.Stores() {
		a.moveEmbedded(sc)
	}
	// The hub is fed while a /ws subscriber holds the feed; trying it
	// once here makes a feed that cannot start an error at start.
	a.feeder = hub.NewFeeder(func() (func(), error) {
		// Its own context: Start's may have ended when a subscriber comes.
		fctx, cancel := context.WithTimeout(context.Background(), stream.DefaultConnectTimeout)
		defer cancel()
		stop, last, err := e.Feed(fctx, a.hub.Feed)
		if err == nil {
			a.hub.FeedFrom(last)
		}
		return stop, err
	}, 0)
	release, err := a.feeder.Hold(ctx)
	if err != nil {
		return fmt.Errorf("NATS: %w", err)
	}
	release()
	a.feeder.Close() // nobody watches yet
	a.httpAPI.Feed = a.feeder
	a.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nbiot_livelog_async_failed_total",
		Help: "Live-log entries sent without waiting that the stream did not store: downlink and error entries, and with storage on the embedded engine every accepted uplink's entry (its uplink is stored all the same)."},
		func() float64 { return float64(e.AsyncErrors()) }))
	a.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nbiot_nats_refused_total",
		Help: "Times the external NATS refused coap-server's credentials (NATS_CREDS, NATS_CERT and NATS_KEY, the user in NATS_URL) while it ran: an expired or revoked JWT, a changed password. Each connection keeps trying, reading the files again, up to 5 s apart; uplinks get 5.03 meanwhile."},
		func() float64 { return float64(e.AuthErrors()) }))
	a.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nbiot_nats_permission_denied_total",
		Help: "Publishes and subscriptions the external NATS refused coap-server's user (a permissions violation): it needs to publish on nbiot.>, $JS.API.>, $JS.ACK.> and $JS.FC.>, and subscribe on nbiot.notify.> and _INBOX.>."},
		func() float64 { return float64(e.PermissionErrors()) }))
	a.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nbiot_livelog_behind_waited_total",
		Help: "Accepted uplinks (storage on the embedded engine) whose answer waited until their live-log entry fitted among the 128 KiB of entries that may wait behind their answers: the stream stores entries slower than uplinks come."},
		func() float64 { return float64(e.BehindWaits()) }))
	a.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nbiot_storage_entry_wait_timeouts_total",
		Help: "Stored UPLINKS messages acknowledged although the live-log entries of their uplinks were still unresolved 10 s after their fetch, or half STORAGE_REDELIVERY when shorter (a stalled live log): a crash then may leave those uplinks without an entry."},
		func() float64 { return float64(e.EntryWaitTimeouts()) }))
	if e.Embedded() {
		restored, err := a.restoreDedup(ctx)
		if err != nil {
			return err
		}
		_, maxDevices := e.DevicesHeld()
		a.log.Info("stream: embedded NATS JetStream", "data_dir", sc.DataDir, "sync_always", sc.SyncAlways,
			"devices_max", maxDevices, "recent_uplinks_restored", restored)
		gauge := func(name, help string, f func() float64) {
			a.Metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
		}
		d := a.handler.Dedup
		gauge("nbiot_dedup_bytes", "Memory charged to the answers of recent uplinks; at nbiot_dedup_bytes_max new uplinks get 5.03 (reason dedup_full) until older answers expire.",
			func() float64 { return float64(d.Bytes()) })
		gauge("nbiot_dedup_bytes_max", "The most memory the answers of recent uplinks may take (five sixteenths of the process's memory with the embedded server).",
			func() float64 { return float64(d.MaxBytes()) })
		gauge("nbiot_stream_devices", "Distinct devices the embedded NATS server holds entries of; at nbiot_stream_devices_max a new device's uplinks get 5.03 (reason stream_devices).",
			func() float64 { held, _ := e.DevicesHeld(); return float64(held) })
		a.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nbiot_livelog_unconfirmed_total",
			Help: "Live-log entries whose caller waited for them (without storage, each uplink's) refused because their group's acknowledgement did not show them stored: another writer or a dropped message between its entries; their uplinks got 5.03. Entries nobody waits for (downlink events, errors, and with storage the uplinks' entries, which follow their answers) count in nbiot_livelog_async_failed_total instead, or in nbiot_livelog_entries_sent_again_total when sent once more."},
			func() float64 { return float64(e.UnconfirmedEntries()) }))
		a.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nbiot_livelog_entries_sent_again_total",
			Help: "Live-log entries of accepted uplinks (storage on the embedded engine: the entry follows the answer) that the stream dropped, looked for and not found, and sent a second time. Failures of the second try count in nbiot_livelog_async_failed_total."},
			func() float64 { return float64(e.EntriesSentAgain()) }))
		gauge("nbiot_stream_devices_max", "The most distinct devices the embedded NATS server may hold entries of (a sixteenth of the process's memory, DeviceBytes each).",
			func() float64 { return float64(maxDevices) })
	} else {
		a.log.Info("stream: external NATS JetStream (NATS_URL)", "replicas", sc.Replicas,
			"creds", sc.Creds != "", "private_ca", sc.CAFile != "", "client_cert", sc.CertFile != "")
	}
	return nil
}

// Ready reports whether the listeners are bound and the stream takes
// publishes (/readyz): connected to NATS, and JetStream serving the
// streams (stream.Engine.Ready); without them, uplinks get 5.03.
func (a *App) Ready() bool { return a.ready.Load() && a.engine.Ready() }

// Credentialed is the set of devices that must use DTLS (nil without
// COAPS_ADDR), for tests.
func (a *App) Credentialed() ingest.DeviceSet { return a.handler.Credentialed }

// Registered is the set of devices that may send (nil with AUTO_REGISTER
// on), for tests.
func (a *App) Registered() ingest.DeviceSet { return a.handler.Registered }

// Engine is the stream engine, for tests.
func (a *App) Engine() *stream.Engine { return a.engine }

// moveEmbedded moves, in the background, the accepted uplinks that an
// embedded store in DATA_DIR still holds to NATS_URL's UPLINKS
// (stream.MoveEmbedded): an instance that moved from the embedded server
// to a cluster leaves none of them behind. Shutdown stops it.
func (a *App) moveEmbedded(sc stream.Config) {
	ctx, cancel := context.WithCancel(context.Background())
	a.stopMove = cancel
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		moved, err := stream.MoveEmbedded(ctx, sc, a.engine)
		switch {
		case err != nil && ctx.Err() == nil:
			a.log.Error("stream: the embedded store's uplinks were not all moved to NATS_URL; the rest stay in DATA_DIR for the next start",
				"moved", moved, "data_dir", sc.DataDir, "err", err)
		case moved > 0:
			a.log.Info("stream: moved the uplinks the embedded store still held to NATS_URL", "uplinks", moved, "data_dir", sc.DataDir)
		}
	}()
}

// Failed delivers why the embedded store can no longer take uplinks
// (stream.Engine.Failed): Run then shuts down and returns it, and the
// process exits with an error, to be started again (lifecycle.Failing).
func (a *App) Failed() <-chan error {
	if a.engine == nil {
		return nil
	}
	return a.engine.Failed()
}

func (a *App) serve(name string, fn func() error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := fn(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			a.log.Error("listener stopped", "listener", name, "err", err)
		}
	}()
}

// CoAPAddr is the bound plain CoAP address (nil when off).
func (a *App) CoAPAddr() *net.UDPAddr {
	if a.coapLn == nil {
		return nil
	}
	return a.coapLn.LocalAddr().(*net.UDPAddr)
}

// CoAPSAddr is the bound CoAPS address (nil when off).
func (a *App) CoAPSAddr() *net.UDPAddr {
	if a.coaps == nil {
		return nil
	}
	return a.coaps.Addr()
}

// Downlinks is the downlink service (nil without storage), for tests.
func (a *App) Downlinks() *downlink.Service { return a.downlinks }

// HTTPAddr is the bound HTTP address.
func (a *App) HTTPAddr() net.Addr { return a.httpLn.Addr() }

// MetricsAddr is the bound metrics address, nil when not serving.
func (a *App) MetricsAddr() net.Addr {
	if a.metLn == nil {
		return nil
	}
	return a.metLn.Addr()
}

// listenMetrics serves /metrics on METRICS_ADDR alone.
func (a *App) listenMetrics() error {
	ln, err := lifecycle.ListenMetrics(a.cfg.MetricsAddr, a.cfg.MetricsAddrSet, a.log)
	if ln == nil || err != nil {
		return err
	}
	a.metLn, a.metSrv = ln, httpapi.NewHTTPServer(httpapi.MetricsHandler(a.Metrics), a.log)
	a.serve("metrics", func() error { return a.metSrv.Serve(a.metLn) })
	return nil
}

// Shutdown stops taking uplinks, drains storage, disconnects subscribers
// and stops HTTP, in that order, within ctx. It is idempotent.
func (a *App) Shutdown(ctx context.Context) error {
	a.shutOnce.Do(func() {
		a.ready.Store(false)
		if a.stopMove != nil {
			a.stopMove() // the rest is moved at the next start
		}
		if a.coap != nil {
			a.coap.Stop()
		}
		if a.coaps != nil {
			a.coaps.Stop()
		}
		var errs []error
		if a.engine != nil && !a.engine.FlushLive(liveFlushTimeout(ctx)) {
			errs = append(errs, errors.New("live log: entries still waiting for the stream at shutdown"))
		}
		if a.store != nil {
			if err := a.store.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("storage drain: %w", err))
			}
		}
		if a.feeder != nil {
			a.feeder.Close()
		}
		if a.downlinks != nil {
			if err := a.downlinks.Close(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		for _, stop := range a.closeSets {
			stop()
		}
		if a.httpSrv != nil {
			a.httpAPI.CloseSubscribers()
			if err := a.httpSrv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("http shutdown: %w", err))
			}
		}
		if a.metSrv != nil {
			if err := a.metSrv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("metrics shutdown: %w", err))
			}
		}
		a.wg.Wait()
		if a.engine != nil {
			a.engine.Close()
		}
		a.shutErr = errors.Join(errs...)
	})
	return a.shutErr
}

// liveFlushTimeout is how long shutdown waits for the live-log entries
// still being stored: what is left of ctx, at most 5 s.
func liveFlushTimeout(ctx context.Context) time.Duration {
	d := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		d = max(time.Until(dl), 0)
	}
	return d
}

// Run starts the program and serves until ctx ends, then shuts down within
// drain (the platform's kill timeout less a margin).
func Run(ctx context.Context, cfg Config, logger *slog.Logger, drain time.Duration) error {
	return lifecycle.Run(ctx, New(cfg, logger), logger, drain)
}

// source is where device data lives, for the parts that read it.
func (a *App) source() supa.Source {
	return supa.Source{DatabaseURL: a.cfg.DatabaseURL, SupabaseURL: a.cfg.SupabaseURL, ServiceKey: a.cfg.SupabaseServiceKey}
}

// openDownlinks starts the downlink service when storage is configured (it
// reads device_downlinks from the same database).
func (a *App) openDownlinks(ctx context.Context) error {
	if a.cfg.Storage() == StorageNone {
		return nil
	}
	var err error
	a.downlinks, err = downlink.Open(ctx, a.source(), downlink.Config{
		PollInterval: time.Duration(a.cfg.DownlinkPollSeconds) * time.Second,
		Metrics:      downlink.NewMetrics(a.Metrics),
		Logger:       a.log,
		Live:         a.engine.LogAsync,
	}, nil)
	if err != nil {
		return fmt.Errorf("downlinks: %w", err)
	}
	a.handler.Downlinks = a.downlinks
	return nil
}

// openRegistered loads the devices that may send when AUTO_REGISTER is
// off (Validate made sure storage is configured).
func (a *App) openRegistered(ctx context.Context) error {
	if a.cfg.AutoRegister {
		return nil
	}
	set, stop, err := devset.Open(ctx, a.source(), devset.Registered, a.cfg.Stream.DataDir, a.log)
	if err != nil {
		return fmt.Errorf("AUTO_REGISTER: %w", err)
	}
	a.handler.Registered = set
	a.closeSets = append(a.closeSets, stop)
	return nil
}

// openCoAPS starts the CoAPS listener when COAPS_ADDR is set, with the PSK
// cache and the set of devices that may no longer speak plain CoAP.
func (a *App) openCoAPS(ctx context.Context) error {
	if a.cfg.CoAPSAddr == "" {
		return nil
	}
	m := dtls.NewMetrics(a.Metrics)
	var keyCfg dtls.KeyCacheConfig
	if a.cfg.CoAPSKeyFile && a.cfg.Stream.DataDir != "" {
		var err error
		if keyCfg.File, err = dtls.NewKeyFile(a.cfg.Stream.DataDir, dtls.KeyFileSecret(a.source())); err != nil {
			return fmt.Errorf("COAPS_KEY_FILE: %w", err)
		}
	}
	keys, closeKeys, err := dtls.OpenKeys(ctx, a.source(), keyCfg, m, a.log)
	if err != nil {
		return err
	}
	a.closeSets = append(a.closeSets, closeKeys)
	// With CoAPS on, a device that has a key may not speak plain CoAP.
	cred, closeCred, err := devset.Open(ctx, a.source(), devset.Credentialed, a.cfg.Stream.DataDir, a.log)
	if err != nil {
		return fmt.Errorf("COAPS_ADDR: %w", err)
	}
	a.closeSets = append(a.closeSets, closeCred)
	a.handler.Credentialed = cred
	keys.SeparateUnlisted(cred.Has)
	keys.OnKeyNotice(cred.RefreshSoon) // Postgres: a key added takes effect at once
	a.coaps, err = dtls.Listen(a.cfg.CoAPSAddr, a.handler, dtls.Config{
		Keys:        keys,
		Metrics:     m,
		Logger:      a.log,
		MaxSessions: a.cfg.CoAPSMaxSessions,
		SessionIdle: time.Duration(a.cfg.CoAPSSessionIdleSeconds) * time.Second,
		Limits:      dtls.LimitConfig{PerIPRate: float64(a.cfg.CoAPSHandshakeRate), PerIPBurst: 4 * a.cfg.CoAPSHandshakeRate},
	})
	if err != nil {
		return fmt.Errorf("COAPS_ADDR: %w", err)
	}
	a.serve("coaps", a.coaps.Serve)
	a.log.Info("coaps listening", "addr", a.coaps.Addr().String())
	return nil
}
