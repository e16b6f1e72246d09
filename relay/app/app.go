// Package app wires the relay: token verification, the device access
// check, the shared upstream links to coap-server and the browser
// WebSocket, plus the Live Logs page, health and metrics. main only reads
// the configuration and handles signals; tests run the whole program with
// 127.0.0.1:0 addresses.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nbiot-live/nbiot-live/internal/connlimit"
	"github.com/nbiot-live/nbiot-live/internal/lifecycle"
	"github.com/nbiot-live/nbiot-live/internal/memlimit"
	"github.com/nbiot-live/nbiot-live/internal/supa"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/auth"
	"github.com/nbiot-live/nbiot-live/relay/browser"
	"github.com/nbiot-live/nbiot-live/relay/devices"
	"github.com/nbiot-live/nbiot-live/relay/upstream"
	"github.com/nbiot-live/nbiot-live/relay/web"
)

// App is one relay process.
type App struct {
	cfg Config
	log *slog.Logger
	// Metrics is the relay's Prometheus registry (served on METRICS_ADDR).
	Metrics *prometheus.Registry

	upstreamMetrics *upstream.Metrics
	browserMetrics  *browser.Metrics
	accessMetrics   *access.Metrics
	// queued bounds the frames waiting for every browser (QueueBytes).
	queued *wspeer.Budget

	bg        context.Context // ends background work (JWKS refresh) at Shutdown
	bgCancel  context.CancelFunc
	pg        *access.Postgres
	upstreams *upstream.Manager
	browsers  *browser.Handler
	httpSrv   *http.Server
	httpLn    net.Listener
	metSrv    *http.Server // nil when METRICS_ADDR is off or its default was taken
	metLn     net.Listener

	wg       sync.WaitGroup
	shutOnce sync.Once
	shutErr  error
}

// New builds the program from cfg without binding or dialing anything.
func New(cfg Config, logger *slog.Logger) *App {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bg, cancel := context.WithCancel(context.Background())
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = DefaultQueueBytes()
	}
	queued := wspeer.NewBudget(int64(cfg.QueueBytes))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nbiot_relay_queued_bytes",
		Help: "Bytes of frames waiting to be written to browsers (JSON plus 400 B a frame, once per browser), bounded by RELAY_QUEUE_BYTES.",
	}, func() float64 { return float64(queued.Used()) }))
	return &App{
		cfg: cfg, log: logger, Metrics: reg,
		upstreamMetrics: upstream.NewMetrics(reg),
		browserMetrics:  browser.NewMetrics(reg),
		accessMetrics:   access.NewMetrics(reg),
		queued:          queued,
		bg:              bg, bgCancel: cancel,
	}
}

// Start sets up verification and access checks and binds the listener. On
// error, what was opened is closed.
func (a *App) Start(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			_ = a.Shutdown(context.Background())
		}
	}()
	a.upstreams = upstream.New(upstream.Config{
		URL:          a.cfg.UpstreamURL,
		Token:        a.cfg.UpstreamToken,
		NewBackOff:   a.cfg.UpstreamBackOff,
		MaxDevices:   a.cfg.MaxDevices,
		History:      history(a.cfg.History),
		HistoryBytes: a.cfg.HistoryBytes,
		Now:          a.cfg.Now,
		Logger:       a.log,
		Metrics:      a.upstreamMetrics,
	})
	peer := a.cfg.Peer
	peer.Budget = a.queued
	a.browsers = &browser.Handler{
		AuthDisabled:       a.cfg.AuthDisabled,
		Upstreams:          a.upstreams,
		Origins:            a.cfg.AllowedOrigins,
		Peer:               peer,
		MaxConnections:     a.cfg.MaxConnections,
		Quotas:             a.cfg.Quotas,
		RecheckEvery:       a.cfg.RecheckEvery,
		Now:                a.cfg.Now,
		TrustedProxyHeader: a.cfg.TrustedProxyHeader,
		Logger:             a.log,
		Metrics:            a.browserMetrics,
	}
	if a.cfg.AuthDisabled {
		a.log.Warn("AUTH DISABLED (AUTH_DISABLED=true): anyone who can reach this relay can watch any device. Local development only!")
	} else if err := a.setupAuth(ctx); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR: listen: %w", err)
	}
	conns := a.cfg.HTTPConnections
	if conns <= 0 {
		conns = a.cfg.MaxConnections + connlimit.Share(memlimit.Bytes(), 32)
	}
	a.httpLn = connlimit.New(ln, conns, connlimit.NewMetrics(a.Metrics, "nbiot_relay"))
	a.httpSrv = newServer(a.routes(), a.log)
	a.serve("http", a.httpSrv, a.httpLn)
	if err := a.listenMetrics(); err != nil {
		return err
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.browsers.RunRechecks(a.bg)
	}()
	a.log.Info("relay listening", "addr", a.httpLn.Addr().String(), "access", a.cfg.AccessMode())
	return nil
}

// newServer bounds what a client can hold of an HTTP server before its
// handler runs: 10 s to send the headers (slowloris), 32 KiB of them (a
// Supabase token is about 1 KiB, MaxTokenLen 8 KiB), and 2 min for an idle
// keep-alive connection between requests. No ReadTimeout or WriteTimeout:
// upgraded WebSockets live for hours and keep their own deadlines.
func newServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

func (a *App) serve(name string, srv *http.Server, ln net.Listener) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("listener stopped", "listener", name, "err", err)
		}
	}()
}

// listenMetrics serves /metrics on METRICS_ADDR alone.
func (a *App) listenMetrics() error {
	ln, err := lifecycle.ListenMetrics(a.cfg.MetricsAddr, a.cfg.MetricsAddrSet, a.log)
	if ln == nil || err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.Metrics, promhttp.HandlerOpts{}))
	a.metLn, a.metSrv = ln, newServer(mux, a.log)
	a.serve("metrics", a.metSrv, a.metLn)
	return nil
}

// history maps RELAY_HISTORY (0 = none) to upstream.Config.History (0 =
// the default, negative = none).
func history(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

func (a *App) setupAuth(ctx context.Context) error {
	v, err := auth.NewVerifier(a.bg, auth.Options{
		JWKSURL:         a.cfg.JWKSURL(),
		Secret:          []byte(a.cfg.SupabaseJWTSecret),
		Issuer:          a.cfg.Issuer(),
		UnknownKIDEvery: a.cfg.JWKSUnknownKIDEvery,
		Now:             a.cfg.Now,
		Registerer:      a.Metrics,
		Logger:          a.log,
	})
	if err != nil {
		return fmt.Errorf("SUPABASE_URL: %w", err)
	}
	a.browsers.Verifier = v
	var checker access.Checker
	switch a.cfg.AccessMode() {
	case AccessPostgres:
		a.pg, err = access.NewPostgres(ctx, a.cfg.DatabaseURL, 4)
		if err != nil {
			return fmt.Errorf("DATABASE_URL: %w", err)
		}
		checker = a.pg
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := a.pg.Pool.Ping(pctx); err != nil {
			msg := "access: database not reachable at start; /device-logs and /devices answer 503 until it is"
			if supa.RefusedLogin(err) {
				msg = "access: the database refuses DATABASE_URL's login (check its user, password and database name); /device-logs and /devices answer 503 until it lets us in"
			}
			a.log.Warn(msg, "err", err)
		}
		cancel()
	default:
		checker = &access.REST{
			BaseURL: a.cfg.SupabaseURL,
			APIKey:  a.cfg.SupabaseAnonKey,
			Client:  &http.Client{Timeout: 5 * time.Second},
		}
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		switch err := supa.ProbeKey(pctx, supa.RESTClient(), a.cfg.SupabaseURL, a.cfg.SupabaseAnonKey, "devices"); {
		case errors.Is(err, supa.ErrKeyRefused):
			a.log.Warn("access: Supabase refuses SUPABASE_ANON_KEY (check it is this project's anon or sb_publishable_ key); /device-logs and /devices answer 503 until it is set right")
		case err != nil:
			a.log.Warn("access: Supabase not reachable at start; /device-logs and /devices answer 503 until it is", "err", err)
		}
		cancel()
	}
	cc := a.cfg.AccessCache
	if cc.Now == nil {
		cc.Now = a.cfg.Now
	}
	a.browsers.Access = access.NewCached(checker, cc, a.accessMetrics)
	return nil
}

func (a *App) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /device-logs", a.browsers)
	mux.Handle("GET /devices", devices.New(devices.Options{Verifier: a.browsers.Verifier, Postgres: a.pg, RESTURL: a.cfg.SupabaseURL, APIKey: a.cfg.SupabaseAnonKey, Allow: a.browsers.AllowQuery, Logger: a.log, Registerer: a.Metrics}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/", web.Handler())
	return mux
}

// HTTPAddr is the bound HTTP address.
func (a *App) HTTPAddr() net.Addr { return a.httpLn.Addr() }

// MetricsAddr is the bound metrics address, nil when not serving.
func (a *App) MetricsAddr() net.Addr {
	if a.metLn == nil {
		return nil
	}
	return a.metLn.Addr()
}

// WatchedDevices is the number of open upstream links, for tests.
func (a *App) WatchedDevices() int { return a.upstreams.Devices() }

// Shutdown closes the upstream links, disconnects the browsers with a
// going-away close frame and stops HTTP, within ctx. It is idempotent.
func (a *App) Shutdown(ctx context.Context) error {
	a.shutOnce.Do(func() {
		var errs []error
		// Links first: a browser waiting for its first upstream connect is
		// released at once instead of holding shutdown up.
		if a.upstreams != nil {
			a.upstreams.Close()
		}
		if a.browsers != nil {
			a.browsers.CloseAll()
		}
		if a.httpSrv != nil {
			if err := a.httpSrv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("http shutdown: %w", err))
			}
		}
		if a.metSrv != nil {
			if err := a.metSrv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("metrics shutdown: %w", err))
			}
		}
		a.bgCancel() // ends the re-checks and the JWKS refresh
		a.wg.Wait()
		if a.pg != nil {
			a.pg.Close()
		}
		a.shutErr = errors.Join(errs...)
	})
	return a.shutErr
}

// Run starts the program and serves until ctx ends, then shuts down within
// drain (the platform's kill timeout less a margin).
func Run(ctx context.Context, cfg Config, logger *slog.Logger, drain time.Duration) error {
	return lifecycle.Run(ctx, New(cfg, logger), logger, drain)
}
