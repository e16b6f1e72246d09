package dtls_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// Both loaders re-read many keys at once, as KeyCache.Refresh does: present
// rows come back with their key, deleted ones are simply absent.
func TestBatchLoadersOverTheRealSchema(t *testing.T) {
	url, restPool := restKeysEnv(t)
	pgPool, err := pgxpool.New(context.Background(), pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pgPool.Close)
	psk := []byte{0x00, '\\', 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}
	for name, tc := range map[string]struct {
		pool   *pgxpool.Pool
		loader dtls.BatchLoader
	}{
		"postgres": {pgPool, dtls.PGKeys{Pool: pgPool}},
		"rest":     {restPool, dtls.RESTKeys{BaseURL: url, ServiceKey: keysSecretKey, Client: supa.RESTClient()}},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			for _, id := range []string{"batch-a", "batch-b"} {
				if _, err := tc.pool.Exec(ctx, `insert into public.devices (devid) values ($1)`, id); err != nil {
					t.Fatal(err)
				}
				if _, err := tc.pool.Exec(ctx, `insert into public.device_credentials (devid, psk) values ($1, $2)`, id, psk); err != nil {
					t.Fatal(err)
				}
			}
			got, err := tc.loader.LoadPSKs(ctx, []string{"batch-a", "batch-b", "batch-gone"})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || !bytes.Equal(got["batch-a"], psk) || !bytes.Equal(got["batch-b"], psk) {
				t.Fatalf("LoadPSKs = %x, want batch-a and batch-b with %x", got, psk)
			}
		})
	}
}
