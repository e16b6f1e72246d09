// Package storagetest is the behavioural suite every storage writer must
// pass, run against the real migrated Postgres (internal/pgtest): the
// postgres writer directly, the rest writer through internal/fakepostgrest.
// It checks what docs/contract.md promises of storage, not how a writer does it.
package storagetest

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/logtest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// NewWriter makes the writer under test for the database at dbURL (a
// superuser URL of a fresh migrated database); cleanup via t.Cleanup.
type NewWriter func(t testing.TB, dbURL string) storage.Writer

// Run runs the suite.
func Run(t *testing.T, newWriter NewWriter) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, NewWriter)
	}{
		{"FullUplinkLandsInEveryTable", testFullUplink},
		{"SecondUplinkUpsertsConfig", testConfigUpsert},
		{"SameRecordTwiceMakesOneRow", testSameRecordTwice},
		{"CopiesOfOneUplinkMakeOneRow", testCopies},
		{"CopiesWrittenAtOnceMakeOneRow", testCopiesAtOnce},
		{"SensorRowsNeverWaitOnCopyCheck", testSensorsDuringCopyCheck},
		{"BatchRetriedAfterCommittedFailure", testRetryAfterFailure},
		{"OlderBatchNeverOverwritesNewer", testOutOfOrder},
		{"PoisonRowSkippedRestStored", testPoison},
		{"RestartStoresEveryUplinkOnce", testRestartStoresOnce},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newWriter) })
	}
}

func ptr[T any](v T) *T { return &v }

// FullUplink is an uplink with every field set.
func FullUplink(devid string, count uint32) *nbiotv1.Uplink {
	return &nbiotv1.Uplink{
		DeviceId: devid, UplinkCount: count, Temperature: ptr(float32(23.5)),
		Activity: &nbiotv1.Activity{Sleep: 3600, Modem: 45, Gnss: 120, Wifi: 30, Other: 60},
		Config: &nbiotv1.DeviceConfig{HeartbeatInterval: ptr(uint32(3600)), HwVersion: "hw-1.2", FwVersion: "fw-2.0.1",
			GnssInterval: ptr(uint32(0)), WifiScanInterval: ptr(uint32(4294967295)), ConfigVersion: ptr(uint32(7))},
		Reboot: &nbiotv1.Reboot{Reason: nbiotv1.Reboot_REASON_WATCHDOG, Count: 3},
		WifiAps: []*nbiotv1.WifiAp{
			{Bssid: []byte{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}, Rssi: -60, Channel: 6},
			{Bssid: []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55}, Rssi: -81, Channel: 11},
		},
		Gnss:      &nbiotv1.Gnss{Lat: 59.329323, Lon: 18.068581, AccuracyM: 4.5},
		BatteryMv: ptr(uint32(3600)),
	}
}

// Rec makes a record received at.
func Rec(devid string, at time.Time, u *nbiotv1.Uplink) uplink.Accepted {
	return uplink.Accepted{ID: uuid.New(), DeviceID: devid, ReceivedAt: at, Uplink: u}
}

// DB is a connection to the test database for checks.
type DB struct {
	t    testing.TB
	conn *pgx.Conn
}

// Connect opens a superuser connection closed at the end of the test.
func Connect(t testing.TB, dbURL string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return &DB{t: t, conn: c}
}

// Int returns a single integer.
func (d *DB) Int(sql string, args ...any) int {
	d.t.Helper()
	var n int
	if err := d.conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		d.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// JSON returns the query's single row as compact JSON (row_to_json).
func (d *DB) JSON(sql string, args ...any) string {
	d.t.Helper()
	var s string
	if err := d.conn.QueryRow(context.Background(), "select coalesce(json_agg(r)::text, '[]') from ("+sql+") r", args...).Scan(&s); err != nil {
		d.t.Fatalf("%s: %v", sql, err)
	}
	var v any
	_ = json.Unmarshal([]byte(s), &v)
	b, _ := json.Marshal(v)
	return string(b)
}

func write(t *testing.T, w storage.Writer, recs ...uplink.Accepted) {
	t.Helper()
	rows := storage.RowsOf(recs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Write(ctx, &rows); err != nil {
		t.Fatalf("write: %v", err)
	}
}

var t0 = time.Date(2026, 11, 27, 10, 30, 0, 123456000, time.UTC)

func testFullUplink(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	w := newWriter(t, dbURL)
	db := Connect(t, dbURL)
	r := Rec("ABC123", t0, FullUplink("ABC123", 42))
	write(t, w, r)

	check := func(name, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("%s\n got %s\nwant %s", name, got, want)
		}
	}
	check("devices", db.JSON(`select devid, owner_id, name, last_seen_at = $1 as seen from devices`, t0),
		`[{"devid":"ABC123","name":null,"owner_id":null,"seen":true}]`)
	check("device_config", db.JSON(`select devid, heartbeat_interval, hw_version, fw_version, gnss_interval,
		wifi_scan_interval, config_version, updated_at = $1 as at from device_config`, t0),
		`[{"at":true,"config_version":7,"devid":"ABC123","fw_version":"fw-2.0.1","gnss_interval":0,"heartbeat_interval":3600,"hw_version":"hw-1.2","wifi_scan_interval":4294967295}]`)
	check("activity", db.JSON(`select uplink_id = $1 as id, devid, uplink_count, sleep, modem, gnss, wifi, other,
		received_at = $2 as at from activity`, r.ID, t0),
		`[{"at":true,"devid":"ABC123","gnss":120,"id":true,"modem":45,"other":60,"sleep":3600,"uplink_count":42,"wifi":30}]`)
	check("sensor_data", db.JSON(`select data_type, data, uplink_id = $1 as id, devid, received_at = $2 as at
		from sensor_data order by data_type`, r.ID, t0),
		`[{"at":true,"data":{"mv":3600},"data_type":"battery","devid":"ABC123","id":true},`+
			`{"at":true,"data":{"accuracy_m":4.5,"lat":59.329323,"lon":18.068581},"data_type":"gnss","devid":"ABC123","id":true},`+
			`{"at":true,"data":{"count":3,"reason":"watchdog"},"data_type":"reboot","devid":"ABC123","id":true},`+
			`{"at":true,"data":{"celsius":23.5},"data_type":"temperature","devid":"ABC123","id":true},`+
			`{"at":true,"data":{"aps":[{"bssid":"aa:bb:cc:dd:ee:ff","channel":6,"rssi":-60},{"bssid":"00:11:22:33:44:55","channel":11,"rssi":-81}]},"data_type":"wifi_scan","devid":"ABC123","id":true}]`)

	// A bare uplink makes a device and an activity row, no sensor rows.
	bare := Rec("BARE1", t0, &nbiotv1.Uplink{DeviceId: "BARE1", UplinkCount: 1})
	write(t, w, bare)
	check("bare", db.JSON(`select (select count(*) from activity where devid = 'BARE1') a,
		(select count(*) from sensor_data where devid = 'BARE1') s, (select count(*) from device_config where devid = 'BARE1') c`),
		`[{"a":1,"c":0,"s":0}]`)
}

func testConfigUpsert(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	w := newWriter(t, dbURL)
	db := Connect(t, dbURL)
	write(t, w, Rec("DEV1", t0, FullUplink("DEV1", 1)))
	u := FullUplink("DEV1", 2)
	u.Config = &nbiotv1.DeviceConfig{HeartbeatInterval: ptr(uint32(60)), FwVersion: "fw-2.1.0", ConfigVersion: ptr(uint32(8))}
	t1 := t0.Add(time.Minute)
	write(t, w, Rec("DEV1", t1, u))
	got := db.JSON(`select heartbeat_interval, hw_version, fw_version, gnss_interval, config_version, updated_at = $1 as at,
		(select count(*) from device_config) as n, (select last_seen_at = $1 from devices) as seen from device_config`, t1)
	want := `[{"at":true,"config_version":8,"fw_version":"fw-2.1.0","gnss_interval":null,"heartbeat_interval":60,"hw_version":null,"n":1,"seen":true}]`
	if got != want {
		t.Errorf("device_config after second uplink\n got %s\nwant %s", got, want)
	}
	if n := db.Int(`select count(*) from activity`); n != 2 {
		t.Errorf("activity rows %d, want 2", n)
	}
}

func counts(db *DB) string {
	return db.JSON(`select (select count(*) from devices) d, (select count(*) from device_config) c,
		(select count(*) from activity) a, (select count(*) from sensor_data) s`)
}

func testSameRecordTwice(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	w := newWriter(t, dbURL)
	db := Connect(t, dbURL)
	r := Rec("TWICE", t0, FullUplink("TWICE", 5))
	write(t, w, r, r)                                        // twice in one batch
	write(t, w, r)                                           // and again later
	write(t, w, Rec("OTHER", t0, FullUplink("OTHER", 1)), r) // and within another batch
	if got, want := counts(db), `[{"a":2,"c":2,"d":2,"s":10}]`; got != want {
		t.Errorf("rows %s, want %s", got, want)
	}
}

// copyOf is a second acceptance of r: a CoAP retransmission that reached
// another instance, or this one after a restart, d later (its own
// uplink_id, the same key).
func copyOf(r uplink.Accepted, d time.Duration) uplink.Accepted {
	c := r
	c.ID, c.ReceivedAt = uuid.New(), r.ReceivedAt.Add(d)
	return c
}

// testCopies: copies of one uplink (same key) accepted within 247 s of each
// other make one row in each table, whether they arrive in one batch or
// in two, first or second; the same key 248 s later is a new uplink (the
// device may reuse a message ID after EXCHANGE_LIFETIME).
func testCopies(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	w := newWriter(t, dbURL)
	db := Connect(t, dbURL)
	r := Rec("COPY", t0, FullUplink("COPY", 5))
	r.Key = [16]byte{1, 2, 3}
	write(t, w, r, copyOf(r, 40*time.Second)) // both in one batch
	write(t, w, copyOf(r, 246*time.Second))   // one in a later batch
	write(t, w, copyOf(r, -2*time.Second))    // an earlier copy, written later
	write(t, w, r)                            // the first again (a redelivery)
	if got, want := counts(db), `[{"a":1,"c":1,"d":1,"s":5}]`; got != want {
		t.Errorf("rows %s, want %s (one uplink)", got, want)
	}
	if n := db.Int(`select count(*) from uplink_duplicates where of_uplink_id = $1`, r.ID); n != 3 {
		t.Errorf("%d copies recorded as duplicates of the first, want 3", n)
	}
	write(t, w, copyOf(r, 248*time.Second))
	other := r
	other.Key = [16]byte{9}
	other.ID = uuid.New()
	write(t, w, other) // another key at the same time
	if n := db.Int(`select count(*) from activity`); n != 3 {
		t.Errorf("%d activity rows, want 3: the same key 248 s later, and another key, are new uplinks", n)
	}
	if n := db.Int(`select count(*) from sensor_data`); n != 15 {
		t.Errorf("%d sensor_data rows, want 15", n)
	}
}

// testCopiesAtOnce: two writers (two instances) write copies of the same
// uplinks at the same moment, in batches that name the devices in opposite
// orders: one row each, and no deadlock.
func testCopiesAtOnce(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	w1, w2 := newWriter(t, dbURL), newWriter(t, dbURL)
	db := Connect(t, dbURL)
	const rounds = 20
	for round := range rounds {
		var a, b []uplink.Accepted
		for _, dev := range []string{"RACE-A", "RACE-B", "RACE-C"} {
			r := Rec(dev, t0.Add(time.Duration(round)*time.Minute*5), FullUplink(dev, uint32(round)))
			r.Key = [16]byte{byte(round), dev[5]}
			a = append(a, r)
			b = append([]uplink.Accepted{copyOf(r, time.Second)}, b...)
		}
		var wg sync.WaitGroup
		for _, job := range []struct {
			w    storage.Writer
			recs []uplink.Accepted
		}{{w1, a}, {w2, b}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rows := storage.RowsOf(job.recs)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := job.w.Write(ctx, &rows); err != nil {
					t.Errorf("round %d: %v", round, err)
				}
			}()
		}
		wg.Wait()
	}
	if n := db.Int(`select count(*) from activity`); n != 3*rounds {
		t.Errorf("%d activity rows, want %d: one per uplink, not per copy", n, 3*rounds)
	}
	if n := db.Int(`select count(*) from uplink_duplicates`); n != 3*rounds {
		t.Errorf("%d copies recorded, want %d", n, 3*rounds)
	}
}

// testSensorsDuringCopyCheck: while another instance's activity insert
// holds a device's row for its copy check, this writer's sensor_data rows
// of that device go in at once. The REST writer writes sensor_data in a
// transaction of its own, whose foreign-key check takes KEY SHARE on the
// devices row: a copy check that locked it FOR UPDATE made the two wait on
// each other, and two instances deadlocked (40P01) on devices named in
// different orders. The check takes FOR NO KEY UPDATE, which serialises
// copy checks and leaves foreign keys alone.
func testSensorsDuringCopyCheck(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	w := newWriter(t, dbURL)
	write(t, w, Rec("LOCK-A", t0, FullUplink("LOCK-A", 1)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	other := Connect(t, dbURL)
	tx, err := other.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, `insert into activity (uplink_id, devid, uplink_count, received_at, msg_key)
		values (gen_random_uuid(), 'LOCK-A', 2, now(), repeat('ab', 16))`); err != nil {
		t.Fatal(err)
	}
	rows := storage.RowsOf([]uplink.Accepted{Rec("LOCK-A", t0.Add(time.Minute), FullUplink("LOCK-A", 3))})
	rows.Devices, rows.Configs, rows.Activity = nil, nil, nil
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := w.Write(wctx, &rows); err != nil {
		t.Fatalf("sensor_data rows waited on another transaction's copy check: %v", err)
	}
}

// flaky writes through the real writer, then reports a failure for the
// first n attempts: the database committed, the client saw an error (a
// connection lost before the answer), so the queue writes it again.
type flaky struct {
	storage.Writer
	mu       sync.Mutex
	failures int
	calls    int
}

func (f *flaky) Write(ctx context.Context, rows *storage.Rows) error {
	err := f.Writer.Write(ctx, rows)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if err == nil && f.calls <= f.failures {
		return io.ErrUnexpectedEOF
	}
	return err
}

func fastBackOff() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) }

func testRetryAfterFailure(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	f := &flaky{Writer: newWriter(t, dbURL), failures: 2}
	db := Connect(t, dbURL)
	p := NewPipeline(t, f, storage.Options{BatchSize: 100, BatchAge: 200 * time.Millisecond, Workers: 1, NewBackOff: fastBackOff})
	for i := range 20 {
		p.Publish(Rec("RETRY", t0.Add(time.Duration(i)*time.Second), FullUplink("RETRY", uint32(i))))
	}
	p.WaitSettled(20)
	m := p.Consumer.Metrics()
	if got := testutil.ToFloat64(m.WriteErrors); got < 2 {
		t.Errorf("write errors %v, want ≥ 2 (the retries happened)", got)
	}
	if got := testutil.ToFloat64(m.Stored); got != 20 {
		t.Errorf("stored %v, want 20", got)
	}
	if got, want := counts(db), `[{"a":20,"c":1,"d":1,"s":100}]`; got != want {
		t.Errorf("rows %s, want %s", got, want)
	}
}

func testOutOfOrder(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	w := newWriter(t, dbURL)
	db := Connect(t, dbURL)
	newer, older := FullUplink("ORDER", 2), FullUplink("ORDER", 1)
	newer.Config.FwVersion, older.Config.FwVersion = "new", "old"
	write(t, w, Rec("ORDER", t0.Add(time.Hour), newer))
	write(t, w, Rec("ORDER", t0, older))
	got := db.JSON(`select fw_version, updated_at = $1 as at, (select last_seen_at = $1 from devices) as seen from device_config`, t0.Add(time.Hour))
	if want := `[{"at":true,"fw_version":"new","seen":true}]`; got != want {
		t.Errorf("after an older batch\n got %s\nwant %s", got, want)
	}
}

func testPoison(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	w := newWriter(t, dbURL)
	db := Connect(t, dbURL)
	var logs logtest.Buffer
	p := NewPipeline(t, w, storage.Options{BatchSize: 100, BatchAge: 500 * time.Millisecond, Workers: 1, NewBackOff: fastBackOff,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	// ingest refuses a hw_version over 64 bytes; this record bypasses it,
	// so the database's check (char_length <= 64) rejects it for good.
	bad := FullUplink("POISON", 99)
	bad.Config.HwVersion = strings.Repeat("x", 100)
	poison := Rec("POISON", t0, bad)
	for i := range 30 {
		r := Rec("GOOD", t0.Add(time.Duration(i)*time.Second), FullUplink("GOOD", uint32(i)))
		if i == 11 {
			r = poison
		}
		p.Publish(r)
	}
	p.WaitSettled(30)
	if got := testutil.ToFloat64(p.Consumer.Metrics().Rejected); got != 1 {
		t.Errorf("rejected %v, want 1", got)
	}
	if n := db.Int(`select count(*) from activity where devid = 'GOOD'`); n != 29 {
		t.Errorf("good uplinks stored %d, want 29", n)
	}
	if n := db.Int(`select count(*) from activity where uplink_id = $1`, poison.ID); n != 0 {
		t.Errorf("poison uplink stored %d rows", n)
	}
	if !strings.Contains(logs.String(), "uplink_id="+poison.ID.String()) {
		t.Errorf("the poison uplink's id is not in the log:\n%s", logs.String())
	}
}

// testRestartStoresOnce: a consumer that stops halfway (a deploy, a
// crash) leaves the rest in the stream; the next one stores it, and no
// uplink is stored twice.
func testRestartStoresOnce(t *testing.T, newWriter NewWriter) {
	dbURL := pgtest.NewDB(t)
	w := newWriter(t, dbURL)
	db := Connect(t, dbURL)
	f := &blocking{Writer: w, after: 4, blocked: make(chan struct{}), release: make(chan struct{})}
	p := NewPipeline(t, f, storage.Options{BatchSize: 100, Workers: 2})
	const n = 2000
	for i := range n {
		dev := "DRAIN" + string(rune('A'+i%20))
		p.Publish(Rec(dev, t0.Add(time.Duration(i)*time.Millisecond), &nbiotv1.Uplink{DeviceId: dev, UplinkCount: uint32(i), Temperature: ptr(float32(i))}))
	}
	<-f.blocked // four batches written, the fifth hangs
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := p.Consumer.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if got := db.Int(`select count(*) from activity`); got >= n {
		t.Fatalf("stored %d before the restart; the test needs a partial run", got)
	}
	src, err := p.Engine.UplinkSource(context.Background(), prometheus.NewCounter(prometheus.CounterOpts{Name: "y"}))
	if err != nil {
		t.Fatal(err)
	}
	again := storage.NewConsumer(src, w, storage.Options{BatchSize: 250, Workers: 2})
	p.Consumer = again
	deadline := time.Now().Add(time.Minute)
	for db.Int(`select (select count(*) from activity) + (select count(*) from sensor_data)`) < 2*n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling the table the consumer fills
	}
	if got := db.Int(`select count(*) from activity`); got != n {
		t.Errorf("activity rows %d, want %d", got, n)
	}
	if got := db.Int(`select count(*) from sensor_data`); got != n {
		t.Errorf("sensor rows %d, want %d", got, n)
	}
}

// blocking writes its first after batches, then hangs until released or
// cancelled.
type blocking struct {
	storage.Writer
	after   int
	mu      sync.Mutex
	n       int
	blocked chan struct{}
	once    sync.Once
	release chan struct{}
}

func (b *blocking) Write(ctx context.Context, rows *storage.Rows) error {
	b.mu.Lock()
	b.n++
	n := b.n
	b.mu.Unlock()
	if n <= b.after {
		return b.Writer.Write(ctx, rows)
	}
	b.once.Do(func() { close(b.blocked) })
	select {
	case <-b.release:
		return b.Writer.Write(ctx, rows)
	case <-ctx.Done():
		return ctx.Err()
	}
}
