package app

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"

	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/internal/envconf"
)

// Config is coap-server's configuration. FromEnv fills it from the
// environment; every field documents its variable and default.
type Config struct {
	// CoAPAddr (COAP_ADDR, default ":5683") is the plain CoAP UDP address;
	// "off" disables plain CoAP so that only CoAPS is served. On Fly.io bind
	// fly-global-services:5683 (docs/pitfalls.md#fly).
	CoAPAddr string
	// CoAPSAddr (COAPS_ADDR, default empty = off) is the CoAPS (DTLS) address.
	CoAPSAddr string
	// HTTPAddr (HTTP_ADDR, default ":8080") serves /ws, /healthz, /readyz.
	HTTPAddr string
	// HTTPConnections bounds the TCP connections of HTTP_ADDR, upgraded or
	// not (connlimit): 0 takes as many as a thirty-second of the memory
	// holds at connlimit.ConnBytes (800 at GOMEMLIMIT=400MiB; /ws is for
	// relays and tools, a handful).
	HTTPConnections int
	// MetricsAddr (METRICS_ADDR, default "127.0.0.1:9090"; "off" = none)
	// serves /metrics on a listener of its own, never on HTTP_ADDR: the
	// counters tell an outsider about devices and traffic. Loopback by
	// default; on Fly.io fly.toml sets [::]:9090, reached by Fly's
	// scraper and exposed by no service (the public proxy never routes
	// it). When the default address is taken coap-server starts without it
	// (logged); an address set explicitly must bind.
	MetricsAddr string
	// MetricsAddrSet says METRICS_ADDR was set (its bind failure is fatal).
	MetricsAddrSet bool
	// WSToken (WS_TOKEN, required) is the bearer token /ws subscribers present.
	WSToken string
	// WSTokenPrevious (WS_TOKEN_PREVIOUS) is accepted as well while the
	// subscribers move to a new WSToken.
	WSTokenPrevious string
	// SupabaseURL and SupabaseServiceKey (SUPABASE_URL, SUPABASE_SERVICE_KEY)
	// select REST storage; the key is a service_role JWT or an sb_secret_ key.
	SupabaseURL        string
	SupabaseServiceKey string
	// DatabaseURL (DATABASE_URL) selects direct Postgres storage. It wins over
	// REST when both are set.
	DatabaseURL string
	// MaxPayload (MAX_UPLINK_BYTES, default 1024) bounds an uplink payload;
	// larger ones get 4.13 with Size1.
	MaxPayload int
	// Stream configures the durable backbone (NATS JetStream): DATA_DIR
	// (default ./data, the embedded server's store), NATS_URL (empty = the
	// embedded single-node server), NATS_SYNC_ALWAYS, NATS_REPLICAS,
	// UPLINKS_MAX_BYTES, LIVELOG_MAX_AGE, LIVELOG_MAX_BYTES and
	// LIVELOG_PER_DEVICE; see stream.Config for each default and why.
	Stream stream.Config
	// StorageQueueSet records that the retired STORAGE_QUEUE_SIZE was set
	// (uplinks now wait in the stream, bounded by UPLINKS_MAX_BYTES).
	StorageQueueSet bool
	// LogLevel (LOG_LEVEL, default "info"): debug, info, warn, error.
	LogLevel slog.Level
	// CoAPSSessionIdleSeconds (COAPS_SESSION_IDLE_SECONDS, default 7200)
	// keeps a silent DTLS session this long, so a device waking behind a new
	// NAT port resumes it by Connection ID instead of a new handshake.
	CoAPSSessionIdleSeconds int
	// CoAPSMaxSessions (COAPS_MAX_SESSIONS, default 0 = what fits in half
	// the process's memory at 67 KiB a session: 3,912 on the 512 MB
	// fly.toml machine) bounds DTLS sessions (at the limit the one silent
	// the longest gives way, see dtls.Config.MaxSessions); a larger value
	// is lowered.
	CoAPSMaxSessions int
	// CoAPSHandshakeRate (COAPS_HANDSHAKE_RATE_PER_IP, default 10) bounds new
	// handshakes per second from one source IP (burst 4x; 32 in flight).
	// Generous because carrier-grade NAT puts many devices behind one IP.
	CoAPSHandshakeRate int
	// CoAPSKeyFile (COAPS_KEY_FILE, default true) keeps the known device
	// keys in DATA_DIR, sealed under the database credential, so a restart
	// while the database is down still lets known devices in; false keeps
	// them in memory only.
	CoAPSKeyFile bool
	// AllowPlaintext (ALLOW_PLAINTEXT=true) lets SUPABASE_URL be http:// to
	// another machine than this one (envconf.Plaintext): only on a network
	// that encrypts. (A DATABASE_URL says so itself, with sslmode:
	// supa.NewPool.)
	AllowPlaintext bool
	// AutoRegister (AUTO_REGISTER, default true) lets an uplink naming an
	// ID that has no devices row create it (unowned until claimed): what a
	// plain-CoAP fleet needs, and it means anyone can create device rows.
	// false: only devices provisioned in devices may send; others get 4.03
	// (the list is re-read every 5 s; needs DATABASE_URL or SUPABASE_URL).
	AutoRegister bool
	// DownlinkPollSeconds (DOWNLINK_POLL_INTERVAL_SECONDS, default 10) is
	// how often REST mode looks for queued downlinks (Postgres mode is
	// notified at once).
	DownlinkPollSeconds int
}

// Storage modes, from the configuration.
const (
	StorageNone     = "none"
	StorageREST     = "rest"
	StoragePostgres = "postgres"
)

// Storage says which writer the configuration selects.
func (c Config) Storage() string {
	switch {
	case c.DatabaseURL != "":
		return StoragePostgres
	case c.SupabaseURL != "":
		return StorageREST
	default:
		return StorageNone
	}
}

// DefaultMetricsAddr is METRICS_ADDR's default: loopback only.
const DefaultMetricsAddr = "127.0.0.1:9090"

// FromEnv reads the configuration through getenv (os.Getenv in main) and
// validates it. An error names the variable at fault and never its value.
func FromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		CoAPAddr:           envconf.Or(getenv("COAP_ADDR"), ":5683"),
		CoAPSAddr:          getenv("COAPS_ADDR"),
		HTTPAddr:           envconf.Or(getenv("HTTP_ADDR"), ":8080"),
		MetricsAddr:        envconf.Or(getenv("METRICS_ADDR"), DefaultMetricsAddr),
		MetricsAddrSet:     getenv("METRICS_ADDR") != "",
		WSToken:            getenv("WS_TOKEN"),
		WSTokenPrevious:    getenv("WS_TOKEN_PREVIOUS"),
		SupabaseURL:        strings.TrimRight(getenv("SUPABASE_URL"), "/"),
		SupabaseServiceKey: getenv("SUPABASE_SERVICE_KEY"),
		DatabaseURL:        getenv("DATABASE_URL"),
		MaxPayload:         ingest.DefaultMaxPayload,
		StorageQueueSet:    getenv("STORAGE_QUEUE_SIZE") != "",
		AutoRegister:       true,
		CoAPSKeyFile:       true,
		Stream: stream.Config{
			URL:     getenv("NATS_URL"),
			DataDir: envconf.Or(getenv("DATA_DIR"), stream.DefaultDataDir),
		},
	}
	var err error
	if c.MaxPayload, err = envconf.Int(getenv, "MAX_UPLINK_BYTES", c.MaxPayload, 64, 65000); err != nil {
		return c, err
	}
	if err := c.Stream.FromEnv(getenv); err != nil {
		return c, err
	}
	for _, v := range []struct {
		dst         *int
		name        string
		def, lo, hi int
	}{
		{&c.CoAPSSessionIdleSeconds, "COAPS_SESSION_IDLE_SECONDS", 7200, 60, 7 * 86400},
		{&c.CoAPSMaxSessions, "COAPS_MAX_SESSIONS", 0, 0, 10_000_000},
		{&c.CoAPSHandshakeRate, "COAPS_HANDSHAKE_RATE_PER_IP", 10, 1, 100000},
		{&c.DownlinkPollSeconds, "DOWNLINK_POLL_INTERVAL_SECONDS", 10, 1, 3600},
	} {
		if *v.dst, err = envconf.Int(getenv, v.name, v.def, v.lo, v.hi); err != nil {
			return c, err
		}
	}
	for _, b := range []struct {
		dst  *bool
		name string
	}{{&c.AutoRegister, "AUTO_REGISTER"}, {&c.CoAPSKeyFile, "COAPS_KEY_FILE"}} {
		if *b.dst, err = envconf.Bool(getenv, b.name, true); err != nil {
			return c, err
		}
	}
	if c.AllowPlaintext, err = envconf.Bool(getenv, envconf.AllowPlaintext, false); err != nil {
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
	if c.WSToken == "" {
		return errors.New("WS_TOKEN is required: the token /ws subscribers (the relay) must present")
	}
	if len(c.WSToken) < 16 {
		return errors.New("WS_TOKEN is too short: use at least 16 random characters")
	}
	if c.WSTokenPrevious != "" && len(c.WSTokenPrevious) < 16 {
		return errors.New("WS_TOKEN_PREVIOUS is too short: it is a WS_TOKEN of before, at least 16 characters")
	}
	if c.WSTokenPrevious == c.WSToken && c.WSToken != "" {
		return errors.New("WS_TOKEN_PREVIOUS is WS_TOKEN: set it to the token being replaced, or unset it")
	}
	if c.CoAPSAddr != "" && c.Storage() == StorageNone {
		return errors.New("COAPS_ADDR needs DATABASE_URL or SUPABASE_URL: device keys are read from device_credentials")
	}
	if !c.AutoRegister && c.Storage() == StorageNone {
		return errors.New("AUTO_REGISTER=false needs DATABASE_URL or SUPABASE_URL: registered devices are read from devices")
	}
	if c.CoAPAddr == "off" && c.CoAPSAddr == "" {
		return errors.New("COAP_ADDR is off and COAPS_ADDR is empty: no CoAP listener would run")
	}
	for name, addr := range map[string]string{"COAP_ADDR": c.CoAPAddr, "COAPS_ADDR": c.CoAPSAddr, "HTTP_ADDR": c.HTTPAddr} {
		if addr == "" || addr == "off" && name != "HTTP_ADDR" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s: want host:port, e.g. :5683", name)
		}
	}
	if c.MetricsAddr != "" && c.MetricsAddr != "off" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return errors.New("METRICS_ADDR: want host:port, e.g. 127.0.0.1:9090, or off")
		}
		if c.MetricsAddr == c.HTTPAddr && !strings.HasSuffix(c.MetricsAddr, ":0") {
			return errors.New("METRICS_ADDR: must differ from HTTP_ADDR (/metrics is never served on the public listener)")
		}
	}
	if c.SupabaseURL != "" {
		u, err := url.Parse(c.SupabaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("SUPABASE_URL: want https://<project>.supabase.co")
		}
		// SUPABASE_SERVICE_KEY goes with every request.
		if err := envconf.Plaintext("SUPABASE_URL", u, "http", "https", c.AllowPlaintext); err != nil {
			return err
		}
		if c.SupabaseServiceKey == "" && c.DatabaseURL == "" {
			return errors.New("SUPABASE_SERVICE_KEY is required with SUPABASE_URL (a service_role JWT or an sb_secret_ key)")
		}
	}
	if v := getenvNATS(c.Stream.URL); v != "" {
		return errors.New(v)
	}
	if c.DatabaseURL != "" {
		if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return errors.New("DATABASE_URL: want postgresql://user:password@host:5432/db")
		}
	}
	return nil
}

// getenvNATS checks NATS_URL's form: nats:// or tls:// URLs, comma-separated.
func getenvNATS(v string) string {
	if v == "" {
		return ""
	}
	for _, part := range strings.Split(v, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
			return "NATS_URL: want nats://host:4222 (comma-separated for a cluster)"
		}
	}
	return ""
}
