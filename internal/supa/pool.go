package supa

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nbiot-live/nbiot-live/internal/envconf"
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

// Connect opens one connection on dsn (a LISTEN, a tool's transaction)
// with the pools' rule on TLS (requireTLS). Errors never contain the URL.
func Connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := connConfig(dsn)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

func connConfig(dsn string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, ErrDatabaseURL
	}
	requireTLS(dsn, cfg)
	poolerSafe(dsn, cfg)
	// As the pools' (PoolOptions.ConnectTimeout): an unreachable database
	// fails fast and the caller retries.
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > defaultConnectTimeout {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	return cfg, nil
}

// defaultConnectTimeout is PoolOptions.ConnectTimeout's default.
const defaultConnectTimeout = 5 * time.Second

// requireTLS makes a connection to another machine use TLS when dsn does
// not say which sslmode (nor PGSSLMODE does): pgx's default, "prefer",
// falls back to plaintext, which anyone in the path can force, and the
// password and every row would cross in clear. It drops those plaintext
// fallbacks, as sslmode=require would (libpq's require does not check the
// certificate either; say sslmode=verify-full for that, or sslmode=disable
// for a network that encrypts). Local hosts (a socket, loopback) are left
// alone.
func requireTLS(dsn string, c *pgx.ConnConfig) {
	if sslmodeGiven(dsn) || os.Getenv("PGSSLMODE") != "" {
		return
	}
	local := func(host string) bool { return strings.HasPrefix(host, "/") || envconf.Local(host) }
	if local(c.Host) && !slices.ContainsFunc(c.Fallbacks, func(f *pgconn.FallbackConfig) bool { return !local(f.Host) }) {
		return
	}
	c.Fallbacks = slices.DeleteFunc(c.Fallbacks, func(f *pgconn.FallbackConfig) bool { return f.TLSConfig == nil })
}

// sslmodeGiven reports whether dsn (a URL or keyword/value string) sets
// sslmode.
func sslmodeGiven(dsn string) bool { return paramGiven(dsn, "sslmode") }

// paramGiven reports whether dsn (a URL or keyword/value string) sets the
// parameter name.
func paramGiven(dsn, name string) bool {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		return u.Query().Has(name)
	}
	return strings.Contains(dsn, name+"=")
}

// poolerSafe makes the connection work through a transaction pooler, as
// Supabase's (Supavisor, port 6543, the connection string its dashboard
// offers first) or PgBouncer in transaction mode, unless dsn chooses a
// default_query_exec_mode itself. pgx's default prepares each statement
// under a name on the server connection, and through such a pooler the
// next transaction may run on another connection, where that name is
// unknown, or already taken by a client gone before (a restart): tried
// through PgBouncer, an eighth of the queries failed, and after a restart
// all of them, for good. Described once and sent unnamed, a statement
// costs the same round trip, and the server parses it each time
// (BenchmarkQueuePostgres: no difference through the noise).
func poolerSafe(dsn string, c *pgx.ConnConfig) {
	if !paramGiven(dsn, "default_query_exec_mode") {
		c.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	}
}

// RefusedLogin reports whether err is Postgres refusing the connection's
// user, password or database (SQLSTATE class 28, or 3D000): DATABASE_URL
// is wrong, rather than the database away.
func RefusedLogin(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "28") || pe.Code == "3D000")
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
		o.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > o.ConnectTimeout {
		cfg.ConnConfig.ConnectTimeout = o.ConnectTimeout
	}
	if o.AppName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = o.AppName
	}
	requireTLS(dsn, cfg.ConnConfig)
	poolerSafe(dsn, cfg.ConnConfig)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	return pool, nil
}
