package dtls

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// PGRefreshInterval is how often the keys are re-read with Postgres, where
// LISTEN/NOTIFY brings changes at once (REST re-reads every 2 s).
const PGRefreshInterval = 30 * time.Second

// OpenKeys returns the PSK cache over src, re-reading its keys every
// RefreshInterval (KeyCache.Run), and a function that stops and releases it.
// Opening does not wait for the database: a pool connects lazily, so
// coap-server starts (and serves plain CoAP) while the database is down.
func OpenKeys(ctx context.Context, src supa.Source, cfg KeyCacheConfig, m *Metrics, logger *slog.Logger) (*KeyCache, func(), error) {
	if src.DatabaseURL != "" {
		// A pool of its own, apart from storage's writer pool, so a backlog
		// of uplink writes never delays a handshake: a connection for each
		// lookup at once, the unlisted identities' one (SeparateUnlisted)
		// and one for Refresh, so that junk identities never hold a
		// connection a device's lookup waits for.
		lookups := cfg.MaxConcurrentLookups
		if lookups <= 0 {
			lookups = defaultConcurrentLookups
		}
		pool, err := supa.NewPool(ctx, src.DatabaseURL, supa.PoolOptions{MaxConns: int32(lookups + 2)})
		if err != nil {
			return nil, nil, err
		}
		// Changes arrive by LISTEN/NOTIFY at once; the periodic re-read is
		// only a safety net here (REST has nothing else).
		if cfg.RefreshInterval <= 0 {
			cfg.RefreshInterval = PGRefreshInterval
		}
		k := NewKeyCache(PGKeys{Pool: pool}, cfg, m, logger)
		stop := k.Start()
		lctx, cancel := context.WithCancel(context.Background())
		listening := make(chan struct{})
		go func() { defer close(listening); k.ListenPG(lctx, src.DatabaseURL) }()
		return k, func() { cancel(); <-listening; stop(); pool.Close() }, nil
	}
	if src.SupabaseURL != "" {
		loader := RESTKeys{BaseURL: src.SupabaseURL, ServiceKey: src.ServiceKey, Client: supa.RESTClient()}
		k := NewKeyCache(loader, cfg, m, logger)
		return k, k.Start(), nil
	}
	return nil, nil, fmt.Errorf("COAPS_ADDR: device keys need DATABASE_URL or SUPABASE_URL")
}

// KeyFileSecret is the secret the key file is sealed under: the credential
// the keys are read with (DATABASE_URL, else the service key).
func KeyFileSecret(src supa.Source) []byte {
	if src.DatabaseURL != "" {
		return []byte(src.DatabaseURL)
	}
	return []byte(src.ServiceKey)
}
