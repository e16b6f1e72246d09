package app

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/postgres"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/rest"
	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// storeConsumer is the stream's storage consumer plus the writer's
// resources, released once it has stopped on Close.
type storeConsumer struct {
	*storage.Consumer
	release func()
}

func (s *storeConsumer) Close(ctx context.Context) error {
	err := s.Consumer.Close(ctx)
	s.release()
	return err
}

// openStorage builds the writer the configuration selects and starts the
// consumer of the uplink stream in front of it; without a database it only
// warns. It logs the mode, never the key or a URL with a password. A
// database that is unreachable at start is only a warning: uplinks queue
// until it answers.
func (a *App) openStorage(ctx context.Context) error {
	var (
		w       storage.Writer
		release = func() {}
	)
	switch a.cfg.Storage() {
	case StorageNone:
		a.log.Warn("NO STORAGE: neither DATABASE_URL nor SUPABASE_URL is set; uplinks are streamed on the live log only and NOT stored")
		return nil
	case StoragePostgres:
		pw, err := postgres.New(ctx, a.cfg.DatabaseURL, postgres.Options{})
		if err != nil {
			return err
		}
		w, release = pw, pw.Close
		host := ""
		if u, err := url.Parse(a.cfg.DatabaseURL); err == nil {
			host = u.Hostname()
		}
		a.log.Info("storage: direct Postgres (DATABASE_URL)", "mode", StoragePostgres, "db_host", host)
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := pw.Ping(pctx); err != nil {
			msg := "storage: database not reachable at start; uplinks wait in the stream until it is"
			if supa.RefusedLogin(err) {
				msg = "storage: the database refuses DATABASE_URL's login (check its user, password and database name); uplinks wait in the stream until it lets us in, live logs go on"
			}
			a.log.Warn(msg, "err", err)
		}
		cancel()
	case StorageREST:
		rw, err := rest.New(a.cfg.SupabaseURL, a.cfg.SupabaseServiceKey, rest.Options{})
		if err != nil {
			return err
		}
		w = rw
		host := ""
		if u, err := url.Parse(a.cfg.SupabaseURL); err == nil {
			host = u.Host
		}
		a.log.Info("storage: Supabase REST (SUPABASE_URL)", "mode", StorageREST, "host", host)
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		switch err := supa.ProbeKey(pctx, supa.RESTClient(), a.cfg.SupabaseURL, a.cfg.SupabaseServiceKey, "devices"); {
		case errors.Is(err, supa.ErrKeyRefused):
			a.log.Warn("storage: Supabase refuses SUPABASE_SERVICE_KEY (check it is this project's service_role or sb_secret_ key); uplinks wait in the stream until it is set right, live logs go on")
		case err != nil:
			a.log.Warn("storage: Supabase not reachable at start; uplinks wait in the stream until it is", "err", err)
		}
		cancel()
	default:
		return fmt.Errorf("storage %q: unknown mode", a.cfg.Storage())
	}
	malformed := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nbiot_stream_malformed_total", Help: "Deliveries of uplink-stream messages this version cannot read (moved to UPLINKS_UNREADABLE, or handed back there or in UPLINKS, for a newer instance; never deleted).",
	})
	a.Metrics.MustRegister(malformed)
	src, err := a.engine.UplinkSource(ctx, malformed)
	if err != nil {
		release()
		return fmt.Errorf("NATS: %w", err)
	}
	a.Metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nbiot_storage_pending", Help: "Messages in UPLINKS and UPLINKS_UNREADABLE waiting for the database (every instance's): each holds one uplink, or up to 64 published together.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		n, _ := src.Pending(ctx)
		return float64(n)
	}))
	c := storage.NewConsumer(src, w, storage.Options{Logger: a.log, Registerer: a.Metrics, Heartbeat: a.redeliverAfter() / 4})
	a.store = &storeConsumer{Consumer: c, release: release}
	return nil
}

// redeliverAfter is the storage consumer's ack wait (STORAGE_REDELIVERY).
func (a *App) redeliverAfter() time.Duration {
	if d := a.cfg.Stream.RedeliverAfter; d > 0 {
		return d
	}
	return time.Minute
}
