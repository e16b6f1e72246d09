package downlink_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// Postgres mode reloads every ReloadInterval, connected or not: a row
// whose notification did not put it (its read failed, or it found the
// cache full) is delivered then, not at the next reconnection. Here the
// row is inserted with triggers off, so no notification is sent at all.
// The interval's sleep is driven by the test (tick), and ready reports
// every finished load.
func TestPGReloadsEveryInterval(t *testing.T) {
	ctx := context.Background()
	dsn, pool := newDB(t)
	tick, loaded := make(chan struct{}), make(chan struct{}, 4)
	s, err := downlink.Open(ctx, supa.Source{DatabaseURL: dsn}, downlink.Config{
		ReloadInterval: time.Minute, // never slept: tick drives the reloads
		Metrics:        downlink.NewMetrics(prometheus.NewRegistry()),
		Logger:         discard,
		Sleep: func(ctx context.Context, _ time.Duration) {
			select {
			case <-tick:
			case <-ctx.Done():
			}
		},
	}, func() { loaded <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeService(t, s) })
	wait := func(what string) {
		t.Helper()
		select {
		case <-loaded:
		case <-time.After(15 * time.Second):
			t.Fatalf("no %s finished", what)
		}
	}
	wait("first load (LISTEN connected)")

	var id int64
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `set local session_replication_role = replica`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `insert into public.devices (devid) values ('unnotified')`); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `insert into public.device_downlinks (devid, config) values ('unnotified', '{"gnss_interval": 60}') returning id`).Scan(&id)
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case tick <- struct{}{}:
	case <-time.After(15 * time.Second):
		t.Fatal("the service is not waiting for its next reload: Postgres mode does not reload every ReloadInterval")
	}
	wait("periodic reload")
	if !s.Holds("unnotified", id) {
		t.Fatalf("row %d is not held after the periodic reload", id)
	}
}
