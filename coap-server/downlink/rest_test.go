package downlink_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/stream/streamtest"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/logtest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/supa"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

var (
	restJWTSecret = []byte("downlink-rest-test-jwt-secret-0123")
	restSecretKey = "sb_secret_downlinkresttest0123"
)

// restEnv is the downlink service in SUPABASE_URL mode: REST store and
// polling against the PostgREST stand-in on a real migrated database. The
// poll's sleep is driven by the test (tick), and every finished load or
// poll is reported on polled, so the test knows exactly which poll it is
// looking at instead of waiting for wall-clock intervals.
type restEnv struct {
	pool    *pgxpool.Pool // superuser: setup and checks
	svc     *downlink.Service
	metrics *downlink.Metrics
	owner   string
	tick    chan struct{}
	polled  chan struct{}
	addr    string // plain CoAP ingest server answering from svc
	url     string // SUPABASE_URL (the stand-in)
	logs    *logtest.Buffer
}

// restOpts shape one restEnv.
type restOpts struct {
	key         string // SUPABASE_SERVICE_KEY
	reloadEvery int    // polls between full reloads
	maxRows     int    // the stand-in's db-max-rows (0: none)
	noWait      bool   // do not wait for the first load
	setup       func(pool *pgxpool.Pool, owner string)
	live        func(*livelog.Entry) // Config.Live
}

// startREST runs the service over the stand-in as o says. setup, if set,
// runs before the service starts (rows for its first load).
func startREST(t *testing.T, o restOpts) *restEnv {
	t.Helper()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	srv := fakepostgrest.Start(t, db, fakepostgrest.Options{JWTSecret: restJWTSecret, SecretKey: restSecretKey, MaxRows: o.maxRows})
	pool, err := pgxpool.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	e := &restEnv{pool: pool, tick: make(chan struct{}), polled: make(chan struct{}, 64), url: srv.URL, logs: &logtest.Buffer{}}
	if err := pool.QueryRow(ctx, `insert into auth.users (email) values ('rest-owner@example.com') returning id::text`).Scan(&e.owner); err != nil {
		t.Fatal(err)
	}
	if o.setup != nil {
		o.setup(pool, e.owner)
	}
	reg := prometheus.NewRegistry()
	e.metrics = downlink.NewMetrics(reg)
	const poll = 10 * time.Second // never slept: tick drives the polls
	e.svc, err = downlink.Open(ctx, supa.Source{SupabaseURL: srv.URL, ServiceKey: o.key}, downlink.Config{
		PollInterval:   poll,
		ReloadInterval: time.Duration(max(1, o.reloadEvery)) * poll,
		Metrics:        e.metrics,
		Live:           o.live,
		Logger:         slog.New(slog.NewTextHandler(e.logs, nil)),
		Sleep: func(ctx context.Context, _ time.Duration) {
			select {
			case <-e.tick:
			case <-ctx.Done():
			}
		},
	}, func() { e.polled <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.svc.Close(cctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if !o.noWait {
		e.waitPolled(t)
	}
	h := &ingest.Handler{Stream: streamtest.New(t, stream.Config{}), Downlinks: e.svc, Logger: discard, Metrics: ingest.NewMetrics(reg)}
	coapSrv := ingest.NewUDPServer(h, discard)
	ln, err := udpListen()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = coapSrv.Serve(ln) }()
	t.Cleanup(coapSrv.Stop)
	e.addr = ln.LocalAddr().String()
	return e
}

func (e *restEnv) waitPolled(t *testing.T) {
	t.Helper()
	select {
	case <-e.polled:
	case <-time.After(15 * time.Second):
		t.Fatal("no load or poll finished")
	}
}

// poll lets the service run one poll and waits until it has finished.
func (e *restEnv) poll(t *testing.T) {
	t.Helper()
	select {
	case e.tick <- struct{}{}:
	case <-time.After(15 * time.Second):
		t.Fatal("the poller is not waiting for its next poll")
	}
	e.waitPolled(t)
}

func (e *restEnv) device(t *testing.T, id string) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), `insert into public.devices (devid, owner_id) values ($1, $2)`, id, e.owner); err != nil {
		t.Fatal(err)
	}
}

// queueIn inserts a downlink in tx as the device's owner, under RLS, the
// way the frontend queues one.
func (e *restEnv) queueIn(t *testing.T, tx pgx.Tx, device, config string) int64 {
	t.Helper()
	ctx := context.Background()
	var id int64
	_, err := tx.Exec(ctx, `select set_config('request.jwt.claims', $1, true)`, fmt.Sprintf(`{"sub":%q,"role":"authenticated"}`, e.owner))
	if err == nil {
		_, err = tx.Exec(ctx, `set local role authenticated`)
	}
	if err == nil {
		err = tx.QueryRow(ctx, `insert into public.device_downlinks (devid, config) values ($1, $2::jsonb) returning id`, device, config).Scan(&id)
	}
	if err != nil {
		t.Fatalf("queue downlink as owner: %v", err)
	}
	return id
}

func (e *restEnv) queue(t *testing.T, device, config string) int64 {
	t.Helper()
	var id int64
	if err := pgx.BeginFunc(context.Background(), e.pool, func(tx pgx.Tx) error {
		id = e.queueIn(t, tx, device, config)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

func (e *restEnv) stamps(t *testing.T, id int64) (sent, applied, superseded bool) {
	t.Helper()
	err := e.pool.QueryRow(context.Background(),
		`select sent_at is not null, applied_at is not null, superseded_at is not null from public.device_downlinks where id = $1`, id).
		Scan(&sent, &applied, &superseded)
	if err != nil {
		t.Fatal(err)
	}
	return
}

// uplink posts u over plain CoAP and returns the 2.04's payload.
func (e *restEnv) uplink(t *testing.T, u *nbiotv1.Uplink) []byte {
	t.Helper()
	return postUplink(t, e.addr, u)
}

// postUplink posts u to addr over plain CoAP (go-coap's client) and
// returns the 2.04's payload; any other answer fails the test.
func postUplink(t *testing.T, addr string, u *nbiotv1.Uplink) []byte {
	t.Helper()
	cc, err := udp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	b, _ := proto.Marshal(u)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
	if err != nil || r.Code() != codes.Changed {
		t.Fatalf("uplink: %v %v", r, err)
	}
	body, err := r.ReadBody()
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// TestRESTDownlinkLifecycle runs queue → poll → send → supersede → apply
// through the REST store (GET with is/gt/order/limit, PATCH with eq/lt/is
// filters) with both kinds of service key.
func TestRESTDownlinkLifecycle(t *testing.T) {
	for name, key := range map[string]func(t *testing.T) string{
		"sb_secret": func(*testing.T) string { return restSecretKey },
		"service_role_jwt": func(t *testing.T) string {
			return fakepostgrest.SignJWT(t, restJWTSecret, map[string]any{"role": "service_role"})
		},
	} {
		t.Run(name, func(t *testing.T) {
			e := startREST(t, restOpts{key: key(t), reloadEvery: 1000})
			e.device(t, "rest-dl")
			old := e.queue(t, "rest-dl", `{"heartbeat_interval": 60}`)
			newer := e.queue(t, "rest-dl", `{"heartbeat_interval": 120, "fw_version": "1.2.3"}`)
			e.poll(t)
			if !e.svc.Holds("rest-dl", newer) {
				t.Fatalf("after a poll the service does not hold row %d", newer)
			}

			var dl nbiotv1.Downlink
			if err := proto.Unmarshal(e.uplink(t, &nbiotv1.Uplink{DeviceId: "rest-dl", UplinkCount: 1}), &dl); err != nil {
				t.Fatal(err)
			}
			if c := dl.GetConfig(); c.GetConfigVersion() != uint32(newer) || c.GetHeartbeatInterval() != 120 || c.GetFwVersion() != "1.2.3" {
				t.Fatalf("sent %v, want the newer row %d", c, newer)
			}
			testwait.For(t, "sent_at on the newer row and superseded_at on the older (REST PATCHes)", func() bool {
				s, _, _ := e.stamps(t, newer)
				_, _, sup := e.stamps(t, old)
				return s && sup
			})
			if s, a, _ := e.stamps(t, old); s || a {
				t.Errorf("superseded row: sent=%v applied=%v, want neither", s, a)
			}

			v := uint32(newer)
			if body := e.uplink(t, &nbiotv1.Uplink{DeviceId: "rest-dl", UplinkCount: 2, Config: &nbiotv1.DeviceConfig{ConfigVersion: &v}}); len(body) != 0 {
				t.Errorf("answer to the applying uplink carries %d bytes", len(body))
			}
			testwait.For(t, "applied_at (REST PATCH)", func() bool { _, a, _ := e.stamps(t, newer); return a })

			if got := testutil.ToFloat64(e.metrics.Dropped.WithLabelValues("stamp_failed")); got != 0 {
				t.Errorf("%v stamps failed", got)
			}
		})
	}
}

// TestRESTPollFindsLateCommittedRow: an identity value is taken at insert,
// but the row is visible only at commit. A downlink whose transaction
// commits after a later one was polled has an id below the poll's mark, so
// "id > last" never returns it; the periodic full reload must.
func TestRESTPollFindsLateCommittedRow(t *testing.T) {
	const reloadEvery = 3
	e := startREST(t, restOpts{key: restSecretKey, reloadEvery: reloadEvery}) // load done: poll n=1 is next
	e.device(t, "late-a")
	e.device(t, "late-b")
	ctx := context.Background()

	slow, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = slow.Rollback(ctx) }()
	lateID := e.queueIn(t, slow, "late-b", `{"gnss_interval": 300}`) // not committed yet
	fastID := e.queue(t, "late-a", `{"gnss_interval": 600}`)
	if fastID <= lateID {
		t.Fatalf("ids %d then %d: want the committed row above the open one", lateID, fastID)
	}

	e.poll(t) // n=1: rows above 0 → late-a only (late-b not committed)
	if !e.svc.Holds("late-a", fastID) || e.svc.Holds("late-b", lateID) {
		t.Fatalf("poll 1: late-a held %v, late-b held %v; want true, false",
			e.svc.Holds("late-a", fastID), e.svc.Holds("late-b", lateID))
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	e.poll(t) // n=2: rows above fastID → nothing; late-b is behind the mark
	if e.svc.Holds("late-b", lateID) {
		t.Fatal("poll 2 found the late row: the test no longer reproduces the gap")
	}
	e.poll(t) // n=3: full reload
	if !e.svc.Holds("late-b", lateID) {
		t.Fatalf("row %d committed late is still not held after the full reload", lateID)
	}
	if b := e.uplink(t, &nbiotv1.Uplink{DeviceId: "late-b", UplinkCount: 1}); len(b) == 0 {
		t.Fatal("the late row is held but not sent")
	}
}

// TestRESTLoadRetriesRefusedKey: a key PostgREST refuses makes the first
// load fail; the failure is counted, the key never appears in the error
// that is logged, and the service keeps retrying (here: once per tick).
func TestRESTLoadRetriesRefusedKey(t *testing.T) {
	const wrong = "sb_secret_not-the-right-one-0123"
	e := startREST(t, restOpts{key: wrong, reloadEvery: 1000, noWait: true})
	testwait.For(t, "a refused load counted", func() bool { return testutil.ToFloat64(e.metrics.RefreshErrors) >= 1 })
	e.tick <- struct{}{} // the retry after the backoff sleep
	testwait.For(t, "the retry counted", func() bool { return testutil.ToFloat64(e.metrics.RefreshErrors) >= 2 })
	select {
	case <-e.polled:
		t.Fatal("a load with a refused key reported success")
	default:
	}

	r := &downlink.REST{BaseURL: e.url, ServiceKey: wrong, Client: supa.RESTClient()}
	err := r.Pending(context.Background(), func(downlink.Row) {})
	if err == nil || !strings.Contains(err.Error(), "HTTP 401") || strings.Contains(err.Error(), wrong) {
		t.Fatalf("error %v: want HTTP 401 without the key", err)
	}
	if out := e.logs.String(); !strings.Contains(out, "downlink load failed") || strings.Contains(out, wrong) {
		t.Fatalf("logs: want the failure without the key:\n%s", out)
	}
}

// TestRESTPagesPastMaxRows: Supabase silently caps a response at its "Max
// rows" (db-max-rows). With a cap of 4, the first load must still find
// every pending device (newest row of each), and a poll every new row.
func TestRESTPagesPastMaxRows(t *testing.T) {
	const before, after = 11, 9
	e := startREST(t, restOpts{key: restSecretKey, reloadEvery: 1000, maxRows: 4, setup: func(pool *pgxpool.Pool, owner string) {
		ctx := context.Background()
		if _, err := pool.Exec(ctx, `insert into public.devices (devid, owner_id)
			select 'page-' || i, $1::uuid from generate_series(1, $2::int) i`, owner, before+after); err != nil {
			t.Error(err)
		}
		// Two rows for page-1, the older first: only the newer is pending.
		if _, err := pool.Exec(ctx, `insert into public.device_downlinks (devid, config)
			select 'page-' || greatest(i - 1, 1), jsonb_build_object('heartbeat_interval', i)
			from generate_series(1, $1::int + 1) i order by i`, before); err != nil {
			t.Error(err)
		}
	}})
	newest := func(dev string) int64 {
		var id int64
		if err := e.pool.QueryRow(context.Background(), `select max(id) from public.device_downlinks where devid = $1`, dev).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	for i := 1; i <= before; i++ {
		dev := fmt.Sprintf("page-%d", i)
		if !e.svc.Holds(dev, newest(dev)) {
			t.Fatalf("first load (cap 4 rows per response): %s not held at its newest row; %d devices held", dev, e.svc.Len())
		}
	}
	if _, err := e.pool.Exec(context.Background(), `insert into public.device_downlinks (devid, config)
		select 'page-' || i, '{"gnss_interval": 60}' from generate_series($1::int + 1, $1::int + $2::int) i order by i`, before, after); err != nil {
		t.Fatal(err)
	}
	e.poll(t)
	if n := e.svc.Len(); n != before+after {
		t.Fatalf("after one poll %d devices held, want %d", n, before+after)
	}
}
