package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func countRows(t testing.TB, dbURL, sql string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return -1 // down: the caller polls again
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, sql).Scan(&n); err != nil {
		return -1
	}
	return n
}

// TestStoresThroughREST: an uplink over CoAP lands in Postgres through the
// REST writer and the PostgREST stand-in, with an sb_secret_ key.
func TestStoresThroughREST(t *testing.T) {
	db := pgtest.NewDB(t)
	srv := fakepostgrest.Start(t, db, fakepostgrest.Options{SecretKey: "sb_secret_apptest0123"})
	a := startApp(t, func(c *app.Config) { c.SupabaseURL, c.SupabaseServiceKey = srv.URL, "sb_secret_apptest0123" })
	cc := dialCoAP(t, a)
	temp := float32(21)
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "REST1", UplinkCount: 1, Temperature: &temp}); code != codes.Changed {
		t.Fatalf("code %v", code)
	}
	testwait.ForState(t, "uplink stored", func() (bool, string) {
		n := countRows(t, db, `select count(*) from activity a join sensor_data s using (uplink_id) where a.devid = 'REST1'`)
		return n == 1, fmt.Sprint(n, " rows")
	}, testwait.Within(10*time.Second))
}

// TestRetransmissionStoredOnce: a CON retransmitted (same message ID, RFC
// 7252 §4.5) to an app that stores makes one row, not two.
func TestRetransmissionStoredOnce(t *testing.T) {
	db := pgtest.NewDB(t)
	a := startApp(t, func(c *app.Config) { c.DatabaseURL = db })
	conn, err := net.DialUDP("udp", nil, a.CoAPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p1, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "RETX", UplinkCount: 1})
	p2, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "RETX", UplinkCount: 2})
	first := rawCON(t, 0x2345, []byte{9, 8, 7, 6}, p1)
	exchange(t, conn, first)
	exchange(t, conn, first)
	exchange(t, conn, rawCON(t, 0x2346, []byte{5, 4, 3, 2}, p2))
	// Uplink #2 stored means #1 and its retransmission were processed
	// before it (one connection, answered in order).
	testwait.ForState(t, "uplink #2 stored", func() (bool, string) {
		n := countRows(t, db, `select count(*) from activity where devid = 'RETX' and uplink_count = 2`)
		return n == 1, fmt.Sprint(n)
	}, testwait.Within(10*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil { // drains the queue
		t.Fatal(err)
	}
	if n := countRows(t, db, `select count(*) from activity where devid = 'RETX' and uplink_count = 1`); n != 1 {
		t.Errorf("uplink #1 stored %d times, want 1", n)
	}
}

// TestPostgresOutage stops the database for 10 s in the middle of a stream
// of uplinks sent over real CoAP: every uplink is answered 2.04 and
// streamed on /ws throughout, and every one is stored exactly once after
// the database returns. The RTT figures are logged.
func TestPostgresOutage(t *testing.T) {
	cl := pgtest.StartCluster(t)
	a := startApp(t, func(c *app.Config) { c.DatabaseURL = cl.URL })
	ws := dialWS(t, a, "")
	var frames atomic.Int64
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
			frames.Add(1)
		}
	}()

	const clients, interval = 4, 25 * time.Millisecond // 160 uplinks/s in all
	conns := make([]*udpClient.Conn, clients)
	for i := range conns {
		conns[i] = dialCoAP(t, a)
	}
	var (
		phase  atomic.Int32 // 0 before, 1 outage, 2 after
		mu     sync.Mutex
		rtts   [3][]time.Duration
		failed []string
		ok     atomic.Int64
		wg     sync.WaitGroup
	)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	for i, cc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := fmt.Sprintf("OUTAGE%d", i)
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for n := uint32(1); n <= 100_000; n++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				temp, mv := float32(n%40), uint32(3600)
				b, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: dev, UplinkCount: n, Temperature: &temp, BatteryMv: &mv})
				p := phase.Load()
				// Room for go-coap's CON retransmissions (2 s, then 4 s…) on
				// loaded cores: the test is that every uplink gets 2.04.
				rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				start := time.Now()
				resp, err := cc.Post(rctx, "/uplink", message.AppOctets, bytes.NewReader(b))
				rtt := time.Since(start)
				cancel()
				mu.Lock()
				switch {
				case err != nil:
					failed = append(failed, fmt.Sprintf("%s #%d: %v", dev, n, err))
				case resp.Code() != codes.Changed:
					failed = append(failed, fmt.Sprintf("%s #%d: %v", dev, n, resp.Code()))
				default:
					ok.Add(1)
					rtts[p] = append(rtts[p], rtt)
				}
				mu.Unlock()
			}
		}()
	}

	// The experiment's schedule: traffic until the writes work (the
	// outage interrupts a working path), 10 s without the database, 4 s
	// after it is back.
	testwait.For(t, "the first uplinks stored", func() bool {
		return countRows(t, cl.URL, `select count(*) from activity`) > 0
	}, testwait.Within(30*time.Second))
	cl.Stop(t)
	phase.Store(1)
	stoppedAt := time.Now()
	<-time.After(10 * time.Second)
	queuedAtRestart := counter(t, a.Metrics, "nbiot_storage_pending", nil)
	cl.Start(t)
	phase.Store(2)
	t.Logf("database down for %v; %v uplinks queued when it came back", time.Since(stoppedAt).Round(time.Millisecond), queuedAtRestart)
	<-time.After(4 * time.Second)
	stop()
	wg.Wait()

	if len(failed) > 0 {
		t.Errorf("%d CoAP round trips failed, first: %s", len(failed), failed[0])
	}
	sent := int(ok.Load())
	if len(rtts[1]) == 0 {
		t.Fatal("no uplink was sent during the outage")
	}
	testwait.ForState(t, "every uplink on the live log", func() (bool, string) {
		return frames.Load() == int64(sent), fmt.Sprintf("%d of %d frames", frames.Load(), sent)
	}, testwait.Within(10*time.Second))
	testwait.ForState(t, "every uplink stored", func() (bool, string) {
		n := countRows(t, cl.URL, `select count(*) from activity`)
		return n == sent, fmt.Sprintf("%d of %d stored", n, sent)
	}, testwait.Within(60*time.Second))
	if n := countRows(t, cl.URL, `select count(distinct uplink_id) from activity`); n != sent {
		t.Errorf("distinct uplinks %d, want %d", n, sent)
	}
	if n := countRows(t, cl.URL, `select count(*) from sensor_data`); n != 2*sent {
		t.Errorf("sensor rows %d, want %d", n, 2*sent)
	}
	if n := countRows(t, cl.URL, `select count(*) from (select devid, uplink_count from activity group by 1, 2 having count(*) > 1) d`); n != 0 {
		t.Errorf("%d (device, uplink_count) pairs stored twice", n)
	}
	if e := counter(t, a.Metrics, "nbiot_storage_write_errors_total", nil); e == 0 {
		t.Error("no write failed: the outage did not happen")
	}
	if queuedAtRestart == 0 {
		t.Error("nothing was queued during the outage")
	}
	for p, name := range []string{"before", "outage", "after"} {
		t.Logf("CoAP RTT %-6s n=%4d p50=%v p99=%v max=%v", name, len(rtts[p]), pct(rtts[p], 50), pct(rtts[p], 99), pct(rtts[p], 100))
	}
	t.Logf("uplinks sent=%d stored=%d frames=%d write_errors=%v", sent, sent, frames.Load(),
		counter(t, a.Metrics, "nbiot_storage_write_errors_total", nil))
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1].Round(time.Microsecond)
}
