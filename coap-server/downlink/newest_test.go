package downlink_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// insertRow inserts a downlink as the server (superuser), sent and applied
// when applied is set, as a device answered by another process (or before
// a restart) leaves it.
func insertRow(t *testing.T, exec func(ctx context.Context, sql string, args ...any) pgx.Row, device string, applied bool) int64 {
	t.Helper()
	var id int64
	if err := exec(context.Background(), `insert into public.device_downlinks (devid, config, sent_at, applied_at)
		values ($1, '{"heartbeat_interval": 60}', case when $2 then now() end, case when $2 then now() end) returning id`,
		device, applied).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// REST mode: a poll reads the rows above its mark, and the newest row of
// a device decides, as in device_downlinks_pending. On "late", the newer
// row was applied and the older one never superseded (its stamp gave
// up): the older must not be sent over the configuration the device
// applied. On "held", the cache holds a row when a newer applied one
// appears: it must stop sending it.
func TestRESTPollKeepsTheNewestRowRule(t *testing.T) {
	e := startREST(t, restOpts{key: restSecretKey, reloadEvery: 1000})
	e.device(t, "late")
	e.device(t, "held")
	old := e.queue(t, "held", `{"heartbeat_interval": 600}`)
	e.poll(t)
	if !e.svc.Holds("held", old) {
		t.Fatalf("row %d not held after a poll", old)
	}
	older := insertRow(t, e.pool.QueryRow, "late", false)
	insertRow(t, e.pool.QueryRow, "late", true)
	insertRow(t, e.pool.QueryRow, "held", true)
	e.poll(t)
	for _, dev := range []string{"late", "held"} {
		if b := e.uplink(t, &nbiotv1.Uplink{DeviceId: dev, UplinkCount: 1}); len(b) != 0 {
			t.Errorf("%s: an older row was sent behind the newer applied one", dev)
		}
	}
	if e.svc.Holds("late", older) {
		t.Errorf("late: the older row %d is held", older)
	}
}

// Postgres mode: a notified row is put only while it is the newest of its
// device, and a newer row applied meanwhile stops the older one held.
func TestPGNotificationKeepsTheNewestRowRule(t *testing.T) {
	e := start(t)
	for _, dev := range []string{"late", "held", "sentinel"} {
		e.device(t, dev)
	}
	old := e.queue(t, "held", `{"heartbeat_interval": 600}`)
	testwait.For(t, "the notification of held's row", func() bool { return e.svc.Holds("held", old) })

	var older int64
	if err := pgx.BeginFunc(context.Background(), e.pool, func(tx pgx.Tx) error {
		older = insertRow(t, tx.QueryRow, "late", false) // notified first, read after both committed
		insertRow(t, tx.QueryRow, "late", true)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	insertRow(t, e.pool.QueryRow, "held", true)
	// Notifications are read in order on one connection: once the
	// sentinel's row is held, the three before it were handled.
	last := e.queue(t, "sentinel", `{"gnss_interval": 60}`)
	testwait.For(t, "the sentinel's notification", func() bool { return e.svc.Holds("sentinel", last) })

	if _, err := (downlink.PG{Pool: e.pool}).Row(context.Background(), older); !errors.Is(err, pgx.ErrNoRows) {
		t.Errorf("PG.Row of a row behind a newer one: %v, want pgx.ErrNoRows", err)
	}
	for _, dev := range []string{"late", "held"} {
		if b := postLibcoap(t, e.addr, &nbiotv1.Uplink{DeviceId: dev, UplinkCount: 1}); len(b) != 0 {
			t.Errorf("%s: an older row was sent behind the newer applied one", dev)
		}
	}
}

// A newer row that cannot be delivered (its config is refused) replaces
// the one held: the user replaced that configuration, so it is not sent
// any more. It is counted once, not at every reload that reads it again,
// and is not pending.
func TestInvalidNewerRowHidesTheOlder(t *testing.T) {
	s, m := newStampService(t, &stampStore{}, downlink.StamperConfig{})
	t.Cleanup(func() { closeService(t, s) })
	s.Put(downlink.Row{ID: 1, DeviceID: "replaced", Config: []byte(`{"heartbeat_interval": 600}`)})
	bad := downlink.Row{ID: 2, DeviceID: "replaced", Config: []byte(`{"heartbeat_interval": -1}`)}
	s.Put(bad)
	s.Put(bad) // a reload reads it again
	if p, _, _ := s.ForUplink(uplinkOf("replaced", 0)); len(p) != 0 {
		t.Error("the row the user replaced (by an invalid one) was sent")
	}
	if got := testutil.ToFloat64(m.Dropped.WithLabelValues("invalid_config")); got != 1 {
		t.Errorf("invalid_config = %v, want 1 (once per row)", got)
	}
	if got := testutil.ToFloat64(m.Pending); got != 0 {
		t.Errorf("pending = %v, want 0", got)
	}
}

// The first poll after a load reads what was inserted since, not the
// table's history: a poll reads applied and superseded rows too, and
// from the largest pending id (or 0) it would read every older applied
// row of every device, once per restart.
func TestRESTFirstPollStartsAtTheNewestRow(t *testing.T) {
	e := startREST(t, restOpts{key: restSecretKey, reloadEvery: 1000, setup: func(pool *pgxpool.Pool, owner string) {
		ctx := context.Background()
		if _, err := pool.Exec(ctx, `insert into public.devices (devid, owner_id) select 'hist-' || i, $1::uuid from generate_series(1, 50) i`, owner); err != nil {
			t.Error(err)
		}
		if _, err := pool.Exec(ctx, `insert into public.device_downlinks (devid, config, sent_at, applied_at)
			select 'hist-' || i, '{"heartbeat_interval": 60}', now(), now() from generate_series(1, 50) i`); err != nil {
			t.Error(err)
		}
	}})
	e.device(t, "fresh")
	id := e.queue(t, "fresh", `{"heartbeat_interval": 600}`)
	e.poll(t)
	if !e.svc.Holds("fresh", id) || e.svc.Len() != 1 {
		t.Fatalf("after the first poll: fresh held %v, %d devices held; want only fresh (the applied history not read)", e.svc.Holds("fresh", id), e.svc.Len())
	}
}
