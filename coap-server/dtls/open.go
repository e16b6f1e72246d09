package dtls

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// Source says where device data lives (supa.Source).
//
// Deprecated: use supa.Source; kept until coap-server/app names it.
type Source = supa.Source

// RESTClient is supa.RESTClient.
//
// Deprecated: use supa.RESTClient; kept until downlink's tests name it.
func RESTClient() *http.Client { return supa.RESTClient() }

// OpenKeys returns the PSK cache over src, re-reading its keys every
// RefreshInterval (KeyCache.Run), and a function that stops and releases it.
// Opening does not wait for the database: a pool connects lazily, so
// coap-server starts (and serves plain CoAP) while the database is down.
func OpenKeys(ctx context.Context, src Source, cfg KeyCacheConfig, m *Metrics, logger *slog.Logger) (*KeyCache, func(), error) {
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
