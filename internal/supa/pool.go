package supa

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// PoolOptions shape a pool. Zero fields take the defaults.
type PoolOptions struct {
	// MaxConns (default 4) bounds the connections: each user of the
	// database gets a small pool of its own, so a backlog of uplink writes
	// never delays a handshake's key lookup.
	MaxConns int32
	// ConnectTimeout (default 5 s) bounds one connection attempt, so an
	// unreachable database fails fast and the caller retries. A shorter
	// connect_timeout in the URL is kept.
	ConnectTimeout time.Duration
	// AppName, if set, is the connection's application_name.
	AppName string
}

// ErrDatabaseURL is returned for a DATABASE_URL that does not parse. pgx's
// own error may quote the URL with its password, so it is never wrapped.
var ErrDatabaseURL = errors.New("DATABASE_URL: cannot parse the connection string")

// NewPool makes a pgx pool on dsn without connecting (a pool connects
// lazily, so a database that is down at start only delays the first use).
// Errors never contain the URL.
func NewPool(ctx context.Context, dsn string, o PoolOptions) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, ErrDatabaseURL
	}
	cfg.MaxConns = o.MaxConns
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 4
	}
	cfg.MinConns = 0
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > o.ConnectTimeout {
		cfg.ConnConfig.ConnectTimeout = o.ConnectTimeout
	}
	if o.AppName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = o.AppName
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	return pool, nil
}
