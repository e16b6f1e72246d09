package downlink_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	coapNet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/stream/streamtest"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/supa"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

var discard = slog.New(slog.DiscardHandler)

// liveRecorder stands in for the hub: it keeps the entries broadcast, which
// is all these tests read (the hub and /ws are tested in their packages).
type liveRecorder struct {
	mu      sync.Mutex
	entries []*livelog.Entry
}

func (l *liveRecorder) Broadcast(e *livelog.Entry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, e)
}

func (l *liveRecorder) all() []*livelog.Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*livelog.Entry(nil), l.entries...)
}

type env struct {
	pool *pgxpool.Pool
	svc  *downlink.Service
	live *streamtest.Recorder
	// queued gets the service's own entries (Config.Live).
	queued *liveRecorder
	addr   string
	owner  string
}

// newDB is a fresh migrated database and a pool on it (closed at the
// test's end).
func newDB(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	dsn := pgtest.NewDB(t)
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return dsn, pool
}

// start runs the downlink service against a fresh migrated database (with
// LISTEN/NOTIFY) behind a real plain-CoAP ingest server on loopback.
func start(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	dsn, pool := newDB(t)
	e := &env{pool: pool, live: streamtest.New(t, stream.Config{}), queued: &liveRecorder{}}
	if err := pool.QueryRow(ctx, `insert into auth.users (email) values ('owner@example.com') returning id::text`).Scan(&e.owner); err != nil {
		t.Fatal(err)
	}
	loaded := make(chan struct{}, 16)
	reg := prometheus.NewRegistry()
	var err error
	e.svc, err = downlink.Open(ctx, supa.Source{DatabaseURL: dsn}, downlink.Config{Metrics: downlink.NewMetrics(reg), Logger: discard, Live: e.queued.Broadcast},
		func() { loaded <- struct{}{} })
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
	select {
	case <-loaded:
	case <-time.After(15 * time.Second):
		t.Fatal("downlink service did not load")
	}
	h := &ingest.Handler{Stream: e.live, Downlinks: e.svc, Logger: discard, Metrics: ingest.NewMetrics(reg)}
	srv := ingest.NewUDPServer(h, discard)
	ln, err := udpListen()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	e.addr = ln.LocalAddr().String()
	return e
}

func (e *env) device(t *testing.T, id string) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), `insert into public.devices (devid, owner_id) values ($1, $2)`, id, e.owner); err != nil {
		t.Fatal(err)
	}
}

// queue inserts a downlink the way the frontend does: as the signed-in
// owner, under RLS.
func (e *env) queue(t *testing.T, device, config string) int64 {
	t.Helper()
	ctx := context.Background()
	var id int64
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `select set_config('request.jwt.claims', $1, true)`,
			fmt.Sprintf(`{"sub":%q,"role":"authenticated"}`, e.owner)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `set local role authenticated`); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `insert into public.device_downlinks (devid, config) values ($1, $2::jsonb) returning id`, device, config).Scan(&id)
	})
	if err != nil {
		t.Fatalf("queue downlink as owner: %v", err)
	}
	return id
}

func (e *env) stamps(t *testing.T, id int64) (sent, applied, superseded bool) {
	t.Helper()
	err := e.pool.QueryRow(context.Background(),
		`select sent_at is not null, applied_at is not null, superseded_at is not null from public.device_downlinks where id = $1`, id).
		Scan(&sent, &applied, &superseded)
	if err != nil {
		t.Fatal(err)
	}
	return
}

// postLibcoap sends u with libcoap's plain client and returns the 2.04's
// payload as written by -o.
func postLibcoap(t *testing.T, addr string, u *nbiotv1.Uplink) []byte {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "up.bin"), filepath.Join(dir, "down.bin")
	b, _ := proto.Marshal(u)
	if err := os.WriteFile(in, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "coap-client-notls", "-m", "post", "-t", "42", "-f", in, "-o", out, "-B", "5", "coap://"+addr+"/uplink")
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("coap-client-notls: %v\n%s", err, o)
	}
	resp, _ := os.ReadFile(out)
	return resp
}

// protocDecode decodes a Downlink with protoc, independently of our
// generated code.
func protocDecode(t *testing.T, b []byte) string {
	t.Helper()
	root, err := filepath.Abs("../../proto")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("protoc", "--decode", "nbiot.v1.Downlink", "-I", root, "nbiot/v1/nbiot.proto")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("protoc --decode: %v\n%s", err, out)
	}
	return string(out)
}

func TestQueuedDownlinkIsSentThenApplied(t *testing.T) {
	e := start(t)
	e.device(t, "dev-dl")
	id := e.queue(t, "dev-dl", `{"heartbeat_interval": 600, "gnss_interval": 0}`)
	testwait.For(t, "the notification", func() bool { return e.svc.Len() == 1 })

	resp := postLibcoap(t, e.addr, &nbiotv1.Uplink{DeviceId: "dev-dl", UplinkCount: 1})
	want := fmt.Sprintf("config {\n  heartbeat_interval: 600\n  gnss_interval: 0\n  config_version: %d\n}\n", id)
	if got := protocDecode(t, resp); got != want {
		t.Fatalf("protoc decoded\n%s\nwant\n%s", got, want)
	}
	testwait.For(t, "sent_at", func() bool { s, _, _ := e.stamps(t, id); return s })
	entries := e.live.All()
	if len(entries) != 2 || entries[1].Type != livelog.TypeDownlink || entries[1].Message != fmt.Sprintf("Sent configuration v%d", id) {
		t.Fatalf("live log %+v, want the uplink then a downlink entry", entries)
	}
	if d := entries[0].Data.(*livelog.UplinkData); d.ConfigApplied != nil {
		t.Errorf("config_applied on the first uplink = %v, want absent (nothing sent before)", *d.ConfigApplied)
	}

	// The device did not apply it yet (reports no version): resent.
	if resp := postLibcoap(t, e.addr, &nbiotv1.Uplink{DeviceId: "dev-dl", UplinkCount: 2}); len(resp) == 0 {
		t.Fatal("pending downlink not resent to a device still on the old config")
	}
	if d := e.live.All()[2].Data.(*livelog.UplinkData); d.ConfigApplied == nil || *d.ConfigApplied {
		t.Errorf("config_applied = %v, want false", d.ConfigApplied)
	}

	// It reports config_version = id: applied, nothing more to send.
	v := uint32(id)
	cc, err := udp.Dial(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	b, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "dev-dl", UplinkCount: 3, Config: &nbiotv1.DeviceConfig{ConfigVersion: &v}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
	if err != nil || r.Code() != codes.Changed {
		t.Fatalf("uplink reporting the version: %v %v", r, err)
	}
	if body, _ := r.ReadBody(); len(body) != 0 {
		t.Errorf("answer to the applying uplink carries %d bytes, want none", len(body))
	}
	testwait.For(t, "applied_at", func() bool { _, a, _ := e.stamps(t, id); return a })
	all := e.live.All()
	if d := all[len(all)-2].Data.(*livelog.UplinkData); d.ConfigApplied == nil || !*d.ConfigApplied {
		t.Errorf("config_applied = %v, want true", d.ConfigApplied)
	}
	if last := all[len(all)-1]; last.Type != livelog.TypeDownlink || last.Message != fmt.Sprintf("Configuration v%d applied", id) {
		t.Errorf("after the applying uplink %+v, want the applied entry", last)
	}
}

func TestNewerDownlinkSupersedesOlder(t *testing.T) {
	e := start(t)
	e.device(t, "dev-two")
	old := e.queue(t, "dev-two", `{"heartbeat_interval": 60}`)
	newer := e.queue(t, "dev-two", `{"heartbeat_interval": 120}`)
	testwait.For(t, "both notifications", func() bool { return e.svc.Holds("dev-two", newer) })
	resp := postLibcoap(t, e.addr, &nbiotv1.Uplink{DeviceId: "dev-two", UplinkCount: 1})
	if got := protocDecode(t, resp); !strings.Contains(got, "heartbeat_interval: 120") || !strings.Contains(got, fmt.Sprintf("config_version: %d", newer)) {
		t.Fatalf("sent %q, want the newer config", got)
	}
	testwait.For(t, "stamps", func() bool {
		s, _, _ := e.stamps(t, newer)
		_, _, sup := e.stamps(t, old)
		return s && sup
	})
	if s, a, _ := e.stamps(t, old); s || a {
		t.Errorf("superseded row: sent=%v applied=%v, want neither", s, a)
	}
}

func udpListen() (*coapNet.UDPConn, error) { return coapNet.NewListenUDP("udp", "127.0.0.1:0") }
