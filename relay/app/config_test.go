package app_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/internal/memlimit"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

func TestFromEnvDefaults(t *testing.T) {
	cfg, err := app.FromEnv(env(map[string]string{"UPSTREAM_TOKEN": "t", "AUTH_DISABLED": "true"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != ":8090" || cfg.UpstreamURL != "ws://localhost:8080/ws" || !cfg.AuthDisabled || cfg.AccessMode() != app.AccessNone ||
		cfg.History != 100 || cfg.HistoryBytes != 128<<10 {
		t.Errorf("defaults: %+v", cfg)
	}
	// A quarter of the process's memory (memlimit), whatever it is here.
	if want := int(memlimit.Bytes() / 4); cfg.QueueBytes != want {
		t.Errorf("RELAY_QUEUE_BYTES default %d, want a quarter of %d", cfg.QueueBytes, memlimit.Bytes())
	}
	cfg, err = app.FromEnv(env(map[string]string{"UPSTREAM_TOKEN": "t", "AUTH_DISABLED": "true", "RELAY_QUEUE_BYTES": "8388608"}))
	if err != nil || cfg.QueueBytes != 8<<20 {
		t.Errorf("RELAY_QUEUE_BYTES=8388608: %d, %v", cfg.QueueBytes, err)
	}
	cfg, err = app.FromEnv(env(map[string]string{"UPSTREAM_TOKEN": "t", "SUPABASE_URL": "https://x.supabase.co/", "SUPABASE_ANON_KEY": "sb_publishable_x"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AccessMode() != app.AccessREST || cfg.JWKSURL() != "https://x.supabase.co/auth/v1/.well-known/jwks.json" || cfg.Issuer() != "https://x.supabase.co/auth/v1" {
		t.Errorf("REST mode: %+v", cfg)
	}
}

// The defaults of what browsers make the relay hold fit its memory
// together: connections (at the 13 KiB an idle one holds, measured by
// BenchmarkIdleBrowsers), the watched devices' rings and the queued
// frames take at most seven eighths of it, each its share; a larger
// RELAY_HISTORY_BYTES means fewer devices by default. (They were 20,000
// connections and 1,000 devices whatever the memory: 244 MiB and 125 MiB
// against the 400 MiB of a 512 MB machine.)
func TestDefaultBoundsFitTheMemory(t *testing.T) {
	mem := memlimit.Bytes()
	for _, historyBytes := range []int{128 << 10, 4 << 20, 64 << 20} {
		cfg, err := app.FromEnv(env(map[string]string{"UPSTREAM_TOKEN": "t", "AUTH_DISABLED": "true", "RELAY_HISTORY_BYTES": fmt.Sprint(historyBytes)}))
		if err != nil {
			t.Fatal(err)
		}
		conns := int64(cfg.MaxConnections) * 13 << 10
		rings := int64(cfg.MaxDevices) * int64(cfg.HistoryBytes)
		if conns > mem*3/8 || rings > max(mem/4, int64(historyBytes)) || conns+rings+int64(cfg.QueueBytes) > mem*7/8+int64(historyBytes) {
			t.Errorf("RELAY_HISTORY_BYTES=%d: %d connections (%d B), %d devices (%d B), queue %d B: over the shares of %d B",
				historyBytes, cfg.MaxConnections, conns, cfg.MaxDevices, rings, cfg.QueueBytes, mem)
		}
		if cfg.MaxConnections < 1 || cfg.MaxConnections > 20000 || cfg.MaxDevices < 1 || cfg.MaxDevices > 1000 {
			t.Errorf("RELAY_HISTORY_BYTES=%d: %d connections, %d devices: outside 1–20,000 and 1–1,000", historyBytes, cfg.MaxConnections, cfg.MaxDevices)
		}
	}
	// Set, they are taken as they are.
	cfg, err := app.FromEnv(env(map[string]string{"UPSTREAM_TOKEN": "t", "AUTH_DISABLED": "true", "MAX_CONNECTIONS": "50000", "MAX_WATCHED_DEVICES": "5000"}))
	if err != nil || cfg.MaxConnections != 50000 || cfg.MaxDevices != 5000 {
		t.Errorf("set bounds: %d, %d, %v", cfg.MaxConnections, cfg.MaxDevices, err)
	}
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestFromEnvErrorsNameTheVariable checks that every bad setting stops
// the start with one line naming the variable, and never a secret's value.
func TestFromEnvErrorsNameTheVariable(t *testing.T) {
	const secret = "s3cr3t-value-never-printed"
	ok := map[string]string{"UPSTREAM_TOKEN": secret, "SUPABASE_JWT_SECRET": secret + "-0123456789abcdef", "DATABASE_URL": "postgresql://u:" + secret + "@h/db"}
	cases := []struct {
		name, variable string
		set            map[string]string
	}{
		{"no upstream token", "UPSTREAM_TOKEN", map[string]string{"UPSTREAM_TOKEN": ""}},
		{"bad upstream url", "UPSTREAM_URL", map[string]string{"UPSTREAM_URL": "http://" + secret}},
		{"bad http addr", "HTTP_ADDR", map[string]string{"HTTP_ADDR": "8090"}},
		{"no verification", "SUPABASE_JWT_SECRET", map[string]string{"SUPABASE_JWT_SECRET": ""}},
		{"short secret", "SUPABASE_JWT_SECRET", map[string]string{"SUPABASE_JWT_SECRET": "short-" + secret[:3]}},
		{"no access check", "DATABASE_URL", map[string]string{"DATABASE_URL": ""}},
		{"rest without key", "SUPABASE_ANON_KEY", map[string]string{"DATABASE_URL": "", "SUPABASE_URL": "https://x.supabase.co"}},
		{"bad database url", "DATABASE_URL", map[string]string{"DATABASE_URL": "mysql://" + secret}},
		{"bad supabase url", "SUPABASE_URL", map[string]string{"SUPABASE_URL": "ftp://" + secret}},
		{"bad origin", "ALLOWED_ORIGINS", map[string]string{"ALLOWED_ORIGINS": "https://ok.example.com,example.com/path"}},
		{"bad auth flag", "AUTH_DISABLED", map[string]string{"AUTH_DISABLED": "yes"}},
		{"bad max connections", "MAX_CONNECTIONS", map[string]string{"MAX_CONNECTIONS": "0"}},
		{"bad log level", "LOG_LEVEL", map[string]string{"LOG_LEVEL": "loud"}},
		{"history too deep", "RELAY_HISTORY", map[string]string{"RELAY_HISTORY": "1001"}},
		{"negative history", "RELAY_HISTORY", map[string]string{"RELAY_HISTORY": "-1"}},
		{"history bytes too small", "RELAY_HISTORY_BYTES", map[string]string{"RELAY_HISTORY_BYTES": "100"}},
		{"queue bytes too small", "RELAY_QUEUE_BYTES", map[string]string{"RELAY_QUEUE_BYTES": "4096"}},
		// The token and the key set would cross in clear (ALLOW_PLAINTEXT).
		{"plaintext upstream", "UPSTREAM_URL", map[string]string{"UPSTREAM_URL": "ws://coap.example.com/ws"}},
		{"plaintext supabase", "SUPABASE_URL", map[string]string{"SUPABASE_URL": "http://x.supabase.co"}},
		{"bad plaintext flag", "ALLOW_PLAINTEXT", map[string]string{"ALLOW_PLAINTEXT": "maybe"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := map[string]string{}
			for k, v := range ok {
				m[k] = v
			}
			for k, v := range tc.set {
				m[k] = v
			}
			_, err := app.FromEnv(env(m))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.variable) || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one line naming %s without the secret", err, tc.variable)
			}
		})
	}
	if _, err := app.FromEnv(env(ok)); err != nil {
		t.Errorf("valid configuration refused: %v", err)
	}
	if _, err := app.FromEnv(env(map[string]string{"UPSTREAM_TOKEN": "t", "AUTH_DISABLED": "true", "ALLOWED_ORIGINS": "*"})); err != nil {
		t.Errorf("explicit * refused: %v", err)
	}
}
