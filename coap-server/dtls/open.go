package dtls

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Source says where device data lives: DATABASE_URL (wins) or SUPABASE_URL
// with the service key. coap-server fills it from its configuration.
type Source struct {
	DatabaseURL string
	SupabaseURL string
	ServiceKey  string
}

// NewPool opens a small pgx pool for this package's and downlink's reads,
// apart from storage's writer pool so a backlog of uplink writes never
// delays a handshake. The error never contains the URL (it may hold a
// password).
func NewPool(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: cannot parse")
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	return pool, nil
}

// RESTClient is the HTTP client for Supabase REST reads and stamps: every
// request is bounded (NOTES: supabase-go has no timeouts).
func RESTClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second}
}

// OpenKeys returns the PSK cache over src and a function that releases it.
// Opening does not wait for the database: a pool connects lazily, so
// coap-server starts (and serves plain CoAP) while the database is down.
func OpenKeys(ctx context.Context, src Source, cfg KeyCacheConfig, m *Metrics, logger *slog.Logger) (*KeyCache, func(), error) {
	if src.DatabaseURL != "" {
		pool, err := NewPool(ctx, src.DatabaseURL, 4)
		if err != nil {
			return nil, nil, err
		}
		return NewKeyCache(PGKeys{Pool: pool}, cfg, m, logger), pool.Close, nil
	}
	if src.SupabaseURL != "" {
		loader := RESTKeys{BaseURL: src.SupabaseURL, ServiceKey: src.ServiceKey, Client: RESTClient()}
		return NewKeyCache(loader, cfg, m, logger), func() {}, nil
	}
	return nil, nil, fmt.Errorf("COAPS_ADDR: device keys need DATABASE_URL or SUPABASE_URL")
}
