package dtls

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// OpenKeys returns the PSK cache over src, re-reading its keys every
// RefreshInterval (KeyCache.Run), and a function that stops and releases it.
// Opening does not wait for the database: a pool connects lazily, so
// coap-server starts (and serves plain CoAP) while the database is down.
func OpenKeys(ctx context.Context, src supa.Source, cfg KeyCacheConfig, m *Metrics, logger *slog.Logger) (*KeyCache, func(), error) {
	if src.DatabaseURL != "" {
		// A pool of its own, apart from storage's writer pool, so a backlog
		// of uplink writes never delays a handshake.
		pool, err := supa.NewPool(ctx, src.DatabaseURL, supa.PoolOptions{MaxConns: 4})
		if err != nil {
			return nil, nil, err
		}
		k := NewKeyCache(PGKeys{Pool: pool}, cfg, m, logger)
		stop := k.Start()
		return k, func() { stop(); pool.Close() }, nil
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
