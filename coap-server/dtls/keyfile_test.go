package dtls_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// Database stopped and coap-server restarted: a known DTLS device still
// connects, with the key the last run saved (sealed) in DATA_DIR; one
// never seen does not. The file holds no key in clear and opens under no
// other secret.
func TestKnownDeviceConnectsAfterARestartDuringAnOutage(t *testing.T) {
	dir, secret := t.TempDir(), []byte("postgresql://coap:s3cret@db.example:5432/postgres")
	cluster := pgtest.StartCluster(t)
	pool, err := pgxpool.New(context.Background(), cluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	key := []byte("restart-key-0123456789")
	provisionOn(t, pool, "dev-restart", key)
	provisionOn(t, pool, "dev-never", []byte("never-key-0123456789"))

	// run starts one coap-server's CoAPS side over the same DATA_DIR.
	run := func() (*fixture, func()) {
		kf, err := dtls.NewKeyFile(dir, secret)
		if err != nil {
			t.Fatal(err)
		}
		var keys *dtls.KeyCache
		f := newFixture(t, func(c *dtls.Config) {
			keys = dtls.NewKeyCache(dtls.PGKeys{Pool: pool}, dtls.KeyCacheConfig{File: kf, LookupTimeout: time.Second}, c.Metrics, discard)
			c.Keys = keys
			c.HandshakeTimeout = 2 * time.Second
		})
		return f, keys.Start()
	}
	first, stop := run()
	if _, _, err := dialGo(t, udpSocket(t), first.srv.Addr(), "dev-restart", key, true); err != nil {
		t.Fatalf("handshake with the database up: %v", err)
	}
	stop() // the process ends; its keys are saved
	first.srv.Stop()
	sealed, err := os.ReadFile(filepath.Join(dir, "dtls-keys.sealed"))
	if err != nil {
		t.Fatalf("no key file after the first run: %v", err)
	}
	if bytes.Contains(sealed, key) || bytes.Contains(sealed, []byte("dev-restart")) {
		t.Fatal("the key file holds a key or an identity in clear")
	}

	cluster.Stop(t)
	second, stop := run()
	t.Cleanup(stop)
	cc, _, err := dialGo(t, udpSocket(t), second.srv.Addr(), "dev-restart", key, true)
	if err != nil {
		t.Fatalf("handshake after a restart with the database down: %v", err)
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("uplink after the restart: %v, want 2.04", code)
	}
	if got := lookups(second, "stale"); got < 1 {
		t.Errorf("stale lookups = %v, want >= 1", got)
	}
	if _, _, err := dialGoWithin(t, udpSocket(t), second.srv.Addr(), "dev-never", []byte("never-key-0123456789"), true, 3*time.Second); err == nil {
		t.Error("a device never seen before the outage connected")
	}
	other, err := dtls.NewKeyFile(dir, []byte("another secret"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Load(); !errors.Is(err, dtls.ErrKeyFileSealed) {
		t.Errorf("Load under another secret: %v, want ErrKeyFileSealed", err)
	}
}

// Two instances (NATS_URL) sharing a DATA_DIR save at the same time:
// every save succeeds and the file opens with one of the saved sets
// whole. With one fixed temporary name, one instance's rename took the
// other's half-written file and the other's failed ("no such file").
func TestConcurrentSavesLeaveAWholeFile(t *testing.T) {
	dir, secret := t.TempDir(), []byte("postgresql://coap:s3cret@db.example:5432/postgres")
	sets := []map[string][]byte{{}, {}}
	for i := range 2000 {
		sets[i%2][fmt.Sprintf("DEV-%d-%05d", i%2, i)] = bytes.Repeat([]byte{byte(i)}, 32)
	}
	errs := make(chan error, 2)
	for _, keys := range sets {
		f, err := dtls.NewKeyFile(dir, secret)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for range 50 {
				if err := f.Save(keys); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("save: %v", err)
		}
	}
	f, _ := dtls.NewKeyFile(dir, secret)
	got, err := f.Load()
	if err != nil {
		t.Fatalf("load after concurrent saves: %v", err)
	}
	if len(got) != len(sets[0]) && len(got) != len(sets[1]) {
		t.Fatalf("loaded %d keys, want one set whole (%d or %d)", len(got), len(sets[0]), len(sets[1]))
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in DATA_DIR after the saves, want the key file alone", len(entries))
	}
}
