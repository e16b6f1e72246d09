package app

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/postgres"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/rest"
)

// queueStore is the storage queue plus the writer's resources, released
// once the queue has drained (or given up) on Close.
type queueStore struct {
	*storage.Queue
	release func()
}

func (s queueStore) Close(ctx context.Context) error {
	err := s.Queue.Close(ctx)
	s.release()
	return err
}

// openWriter builds the writer the configuration selects and starts the
// queue in front of it. It logs the mode, never the key or a URL with a
// password. A database that is unreachable at start is only a warning:
// uplinks queue until it answers.
func (a *App) openWriter(ctx context.Context) error {
	var (
		w       storage.Writer
		release = func() {}
	)
	switch a.cfg.Storage() {
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
		a.log.Info("storage: direct Postgres (DATABASE_URL)", "mode", StoragePostgres, "db_host", host, "queue_size", a.cfg.StorageQueue)
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := pw.Ping(pctx); err != nil {
			a.log.Warn("storage: database not reachable at start; uplinks are queued until it is", "err", err)
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
		a.log.Info("storage: Supabase REST (SUPABASE_URL)", "mode", StorageREST, "host", host, "queue_size", a.cfg.StorageQueue)
	default:
		return fmt.Errorf("storage %q: unknown mode", a.cfg.Storage())
	}
	q := storage.NewQueue(w, storage.Options{Size: a.cfg.StorageQueue, Logger: a.log, Registerer: a.Metrics})
	a.store = queueStore{Queue: q, release: release}
	a.handler.Store = q
	return nil
}
