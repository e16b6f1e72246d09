package app

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/nbiot-live/nbiot-live/internal/envconf"
	"github.com/nbiot-live/nbiot-live/internal/memlimit"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/browser"
	"github.com/nbiot-live/nbiot-live/relay/upstream"
)

// Config is the relay's configuration. FromEnv fills it from the
// environment; every field documents its variable and default. The fields
// after the environment ones are for tests and embedding (zero = default).
type Config struct {
	// HTTPAddr (HTTP_ADDR, default ":8090") serves /device-logs, /devices, / and /healthz.
	HTTPAddr string
	// MetricsAddr (METRICS_ADDR, default "127.0.0.1:9091"; "off" = none)
	// serves /metrics on a listener of its own, never on HTTP_ADDR: the
	// counters tell an outsider who is connected and how the relay is
	// doing. Loopback by default; 9091 so that coap-server's 9090 and the
	// relay's can share a development machine. When the default address
	// is taken the relay starts without it (logged); an address set
	// explicitly must bind.
	MetricsAddr string
	// MetricsAddrSet says METRICS_ADDR was set (its bind failure is fatal).
	MetricsAddrSet bool
	// TrustedProxyHeader (TRUSTED_PROXY_HEADER, default none: the TCP
	// peer's address) names the header carrying the client's address, for
	// the per-address quotas behind a proxy that always sets it, e.g.
	// Fly-Client-IP on Fly.io. X-Forwarded-For and Forwarded are refused:
	// proxies append to what the client sent, so its first entry is the
	// client's choice.
	TrustedProxyHeader string
	// Quotas (MAX_CONNECTIONS_PER_USER, MAX_DEVICES_PER_USER,
	// MAX_CONNECTIONS_PER_IP, MAX_DEVICES_PER_IP,
	// ACCESS_CHECKS_PER_MINUTE_PER_USER, ACCESS_CHECKS_PER_MINUTE_PER_IP)
	// bound each user and client address; defaults in browser.Quotas.
	Quotas browser.Quotas
	// UpstreamURL (UPSTREAM_URL, default "ws://localhost:8080/ws") is
	// coap-server's live-log WebSocket.
	UpstreamURL string
	// UpstreamToken (UPSTREAM_TOKEN, required) is coap-server's WS_TOKEN.
	UpstreamToken string
	// SupabaseURL (SUPABASE_URL) gives the JWKS
	// (<url>/auth/v1/.well-known/jwks.json), the expected issuer
	// (<url>/auth/v1) and, with SupabaseAnonKey, the REST access check.
	SupabaseURL string
	// SupabaseAnonKey (SUPABASE_ANON_KEY): anon JWT or sb_publishable_ key.
	SupabaseAnonKey string
	// SupabaseJWTSecret (SUPABASE_JWT_SECRET): legacy HS256 projects.
	SupabaseJWTSecret string
	// DatabaseURL (DATABASE_URL) checks access directly in Postgres under
	// the same RLS policies; it wins over the REST check when both are set.
	DatabaseURL string
	// AllowedOrigins (ALLOWED_ORIGINS, default none: the relay's own page
	// only) are the web origins allowed to open /device-logs; "*" = any.
	AllowedOrigins browser.Origins
	// AuthDisabled (AUTH_DISABLED=true) skips authentication and access
	// checks: local development only, logged as a warning at start.
	AuthDisabled bool
	// AllowPlaintext (ALLOW_PLAINTEXT=true) lets UPSTREAM_URL be ws:// and
	// SUPABASE_URL http:// to another machine than this one
	// (envconf.Plaintext): only on a network that encrypts.
	AllowPlaintext bool
	// MaxConnections (MAX_CONNECTIONS, default DefaultMaxConnections:
	// 20000, fewer when the memory holds fewer) bounds browser connections.
	MaxConnections int
	// HTTPConnections bounds the TCP connections of HTTP_ADDR, upgraded or
	// not (connlimit): 0 takes MaxConnections plus as many as a
	// thirty-second of the memory holds at connlimit.ConnBytes (800 at
	// GOMEMLIMIT=400MiB), for requests before their upgrade.
	HTTPConnections int
	// MaxDevices (MAX_WATCHED_DEVICES, default DefaultMaxDevices: 1000,
	// fewer when the memory holds fewer rings) bounds devices watched at
	// once, i.e. upstream links to coap-server.
	MaxDevices int
	// History (RELAY_HISTORY, default 100, 0–1000) is how many recent
	// entries each watched device's shared link keeps, to answer a
	// browser's since= or tail= without another upstream connection; 0
	// keeps none.
	History int
	// HistoryBytes (RELAY_HISTORY_BYTES, default 131072) bounds the memory
	// of those entries per device (JSON plus 400 bytes each).
	HistoryBytes int
	// QueueBytes (RELAY_QUEUE_BYTES, default a quarter of the process's
	// memory: DefaultQueueBytes) bounds the frames waiting for every
	// browser together, in bytes (JSON plus 400 bytes a frame, counted once
	// per browser); 0 in a Config built by hand takes the default.
	QueueBytes int
	// LogLevel (LOG_LEVEL, default "info"): debug, info, warn, error.
	LogLevel slog.Level

	// UpstreamBackOff is the reconnect policy (default upstream.DefaultBackOff).
	UpstreamBackOff func() backoff.BackOff
	// JWKSUnknownKIDEvery rate-limits JWKS refetches on an unknown kid (default 30 s).
	JWKSUnknownKIDEvery time.Duration
	// AccessCache tunes the access answer cache (defaults: 5 s / 5 s, 10000 entries).
	AccessCache access.CacheConfig
	// Peer tunes browser connections (internal/wspeer defaults).
	Peer wspeer.Config
	// Now is the clock of token expiry and status entries (default time.Now).
	Now func() time.Time
	// RecheckEvery is how often open sessions' access is asked again
	// (default browser.DefaultRecheckEvery).
	RecheckEvery time.Duration
}

// The relay's memory (memlimit: GOMEMLIMIT, else four fifths of the
// container's limit, else 512 MiB) is shared out by the defaults: browser
// connections three eighths, the watched devices' rings a quarter, the
// frames waiting for browsers a quarter (DefaultQueueBytes); the last
// eighth is for the rest (access cache, TLS, the runtime).

// connectionBytes is what an idle browser connection holds: 12.2–12.5
// KiB measured by BenchmarkIdleBrowsers (goroutines, socket, buffers,
// quota and session entries), rounded up.
const connectionBytes = 13 << 10

// DefaultMaxConnections is MAX_CONNECTIONS's default: as many idle
// connections as three eighths of the memory hold, at most
// browser.DefaultMaxConnections (20,000): 11,815 at GOMEMLIMIT=400MiB.
func DefaultMaxConnections() int {
	return int(min(memlimit.Bytes()*3/8/connectionBytes, browser.DefaultMaxConnections))
}

// DefaultMaxDevices is MAX_WATCHED_DEVICES's default for rings of
// historyBytes: as many full rings as a quarter of the memory holds, at
// most 1,000: 800 at GOMEMLIMIT=400MiB and the default 128 KiB.
func DefaultMaxDevices(historyBytes int) int {
	return int(max(1, min(memlimit.Bytes()/4/int64(historyBytes), 1000)))
}

// DefaultQueueBytes is RELAY_QUEUE_BYTES's default: a quarter of the
// memory the process may use (memlimit: GOMEMLIMIT, else four fifths of
// the container's limit, else 512 MiB), 100 MiB at GOMEMLIMIT=400MiB.
func DefaultQueueBytes() int { return int(memlimit.Bytes() / 4) }

// DefaultMetricsAddr is METRICS_ADDR's default: loopback only.
const DefaultMetricsAddr = "127.0.0.1:9091"

// Access check modes, from the configuration.
const (
	AccessNone     = "none" // AUTH_DISABLED
	AccessPostgres = "postgres"
	AccessREST     = "rest"
)

// AccessMode says how device access is checked.
func (c Config) AccessMode() string {
	switch {
	case c.AuthDisabled:
		return AccessNone
	case c.DatabaseURL != "":
		return AccessPostgres
	default:
		return AccessREST
	}
}

// JWKSURL is the project's key set, or "" without SUPABASE_URL.
func (c Config) JWKSURL() string {
	if c.SupabaseURL == "" {
		return ""
	}
	return c.SupabaseURL + "/auth/v1/.well-known/jwks.json"
}

// Issuer is the iss claim of the project's tokens, or "" without SUPABASE_URL.
func (c Config) Issuer() string {
	if c.SupabaseURL == "" {
		return ""
	}
	return c.SupabaseURL + "/auth/v1"
}

// FromEnv reads the configuration through getenv (os.Getenv in main) and
// validates it. An error names the variable at fault and never its value.
func FromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		HTTPAddr:           envconf.Or(getenv("HTTP_ADDR"), ":8090"),
		MetricsAddr:        envconf.Or(getenv("METRICS_ADDR"), DefaultMetricsAddr),
		MetricsAddrSet:     getenv("METRICS_ADDR") != "",
		TrustedProxyHeader: strings.TrimSpace(getenv("TRUSTED_PROXY_HEADER")),
		UpstreamURL:        envconf.Or(getenv("UPSTREAM_URL"), "ws://localhost:8080/ws"),
		UpstreamToken:      getenv("UPSTREAM_TOKEN"),
		SupabaseURL:        strings.TrimRight(getenv("SUPABASE_URL"), "/"),
		SupabaseAnonKey:    getenv("SUPABASE_ANON_KEY"),
		SupabaseJWTSecret:  getenv("SUPABASE_JWT_SECRET"),
		DatabaseURL:        getenv("DATABASE_URL"),
		MaxConnections:     DefaultMaxConnections(),
		History:            upstream.DefaultHistory,
		HistoryBytes:       upstream.DefaultHistoryBytes,
		QueueBytes:         DefaultQueueBytes(),
	}
	var err error
	if c.AllowedOrigins, err = browser.ParseOrigins(getenv("ALLOWED_ORIGINS")); err != nil {
		return c, fmt.Errorf("ALLOWED_ORIGINS: %w", err)
	}
	if c.AuthDisabled, err = envconf.Bool(getenv, "AUTH_DISABLED", false); err != nil {
		return c, err
	}
	if c.AllowPlaintext, err = envconf.Bool(getenv, envconf.AllowPlaintext, false); err != nil {
		return c, err
	}
	if c.MaxConnections, err = envconf.Int(getenv, "MAX_CONNECTIONS", c.MaxConnections, 1, 1_000_000); err != nil {
		return c, err
	}
	if c.HistoryBytes, err = envconf.Int(getenv, "RELAY_HISTORY_BYTES", c.HistoryBytes, 4096, 64<<20); err != nil {
		return c, err
	}
	// The default follows RELAY_HISTORY_BYTES: each watched device may
	// keep that much.
	if c.MaxDevices, err = envconf.Int(getenv, "MAX_WATCHED_DEVICES", DefaultMaxDevices(c.HistoryBytes), 1, 100_000); err != nil {
		return c, err
	}
	q := &c.Quotas
	for _, f := range []struct {
		name string
		v    *int
		def  int
	}{
		{"MAX_CONNECTIONS_PER_USER", &q.UserConnections, 20},
		{"MAX_DEVICES_PER_USER", &q.UserDevices, 10},
		{"MAX_CONNECTIONS_PER_IP", &q.IPConnections, 200},
		{"MAX_DEVICES_PER_IP", &q.IPDevices, 100},
		{"ACCESS_CHECKS_PER_MINUTE_PER_USER", &q.UserChecksPerMinute, 60},
		{"ACCESS_CHECKS_PER_MINUTE_PER_IP", &q.IPChecksPerMinute, 300},
	} {
		if *f.v, err = envconf.Int(getenv, f.name, f.def, 1, 1_000_000); err != nil {
			return c, err
		}
	}
	if c.History, err = envconf.Int(getenv, "RELAY_HISTORY", c.History, 0, upstream.MaxTail); err != nil {
		return c, err
	}
	if c.QueueBytes, err = envconf.Int(getenv, "RELAY_QUEUE_BYTES", c.QueueBytes, 1<<20, 1<<40); err != nil {
		return c, err
	}
	if v := getenv("LOG_LEVEL"); v != "" {
		if err := c.LogLevel.UnmarshalText([]byte(v)); err != nil {
			return c, errors.New("LOG_LEVEL: want debug, info, warn or error")
		}
	}
	return c, c.Validate()
}

// Validate checks the configuration once, at start.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return errors.New("HTTP_ADDR: want host:port, e.g. :8090")
	}
	if c.MetricsAddr != "" && c.MetricsAddr != "off" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return errors.New("METRICS_ADDR: want host:port, e.g. 127.0.0.1:9091, or off")
		}
		if c.MetricsAddr == c.HTTPAddr && !strings.HasSuffix(c.MetricsAddr, ":0") {
			return errors.New("METRICS_ADDR: must differ from HTTP_ADDR (/metrics is never served on the public listener)")
		}
	}
	if h := c.TrustedProxyHeader; h != "" {
		if strings.EqualFold(h, "X-Forwarded-For") || strings.EqualFold(h, "Forwarded") {
			return errors.New("TRUSTED_PROXY_HEADER: X-Forwarded-For and Forwarded carry what the client sent; name a header your proxy overwrites, e.g. Fly-Client-IP")
		}
		if strings.ContainsAny(h, " :\t") {
			return errors.New("TRUSTED_PROXY_HEADER: want a header name, e.g. Fly-Client-IP")
		}
	}
	u, err := url.Parse(c.UpstreamURL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" || u.User != nil {
		return errors.New("UPSTREAM_URL: want ws://host:port/ws or wss://host/ws (token in UPSTREAM_TOKEN, not in the URL)")
	}
	// UPSTREAM_TOKEN reads every device's live log.
	if err := envconf.Plaintext("UPSTREAM_URL", u, "ws", "wss", c.AllowPlaintext); err != nil {
		return err
	}
	if c.UpstreamToken == "" {
		return errors.New("UPSTREAM_TOKEN is required: coap-server's WS_TOKEN")
	}
	if c.SupabaseURL != "" {
		u, err := url.Parse(c.SupabaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
			return errors.New("SUPABASE_URL: want https://<project>.supabase.co")
		}
		// The keys that verify users' tokens come from there (JWKS).
		if err := envconf.Plaintext("SUPABASE_URL", u, "http", "https", c.AllowPlaintext); err != nil {
			return err
		}
	}
	if c.DatabaseURL != "" {
		if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return errors.New("DATABASE_URL: want postgresql://user:password@host:5432/db")
		}
	}
	if c.AuthDisabled {
		return nil
	}
	if c.SupabaseURL == "" && c.SupabaseJWTSecret == "" {
		return errors.New("SUPABASE_URL (JWKS) or SUPABASE_JWT_SECRET (legacy HS256) is required to verify users (or AUTH_DISABLED=true for local development)")
	}
	if c.SupabaseJWTSecret != "" && len(c.SupabaseJWTSecret) < 32 {
		return errors.New("SUPABASE_JWT_SECRET is too short: Supabase JWT secrets have at least 32 characters")
	}
	if c.DatabaseURL == "" && (c.SupabaseURL == "" || c.SupabaseAnonKey == "") {
		return errors.New("DATABASE_URL, or SUPABASE_URL with SUPABASE_ANON_KEY, is required to check device access (or AUTH_DISABLED=true for local development)")
	}
	return nil
}
