package downlink

import (
	"context"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// Open starts a service over src: Postgres with LISTEN/NOTIFY when
// DatabaseURL is set, else Supabase REST with polling. It does not wait for
// the first load (the database may be down at start); ready, if not nil, is
// called after each load. Close stops it and releases the pool.
func Open(ctx context.Context, src supa.Source, cfg Config, ready func()) (*Service, error) {
	if src.DatabaseURL != "" {
		pool, err := supa.NewPool(ctx, src.DatabaseURL, supa.PoolOptions{MaxConns: 3})
		if err != nil {
			return nil, err
		}
		pg := PG{Pool: pool}
		s := New(pg, cfg)
		s.release = pool.Close
		s.StartPG(src.DatabaseURL, pg, ready)
		return s, nil
	}
	s := New(&REST{BaseURL: src.SupabaseURL, ServiceKey: src.ServiceKey, Client: supa.RESTClient()}, cfg)
	s.StartPolling(s.store.(*REST), ready)
	return s, nil
}
