package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/internal/natstest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/proctest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// instance is one coap-server process on loopback.
type instance struct {
	proc *proctest.Proc
	coap string // host:port
	http string
}

// startProc runs the coap-server binary with env plus its own ports and
// waits for /readyz.
func startProc(t *testing.T, env map[string]string) *instance {
	t.Helper()
	bin := proctest.Build(t, "github.com/nbiot-live/nbiot-live/coap-server")
	in := &instance{
		coap: "127.0.0.1:" + strconv.Itoa(proctest.FreePort(t)),
		http: "127.0.0.1:" + strconv.Itoa(proctest.FreePort(t)),
	}
	if env["COAP_ADDR"] != "" {
		in.coap, in.http = env["COAP_ADDR"], env["HTTP_ADDR"]
	}
	full := map[string]string{"COAP_ADDR": in.coap, "HTTP_ADDR": in.http, "WS_TOKEN": testToken, "STORAGE_REDELIVERY": "2s"}
	for k, v := range env {
		full[k] = v
	}
	in.proc = proctest.Start(t, bin, full)
	testwait.ForState(t, "coap-server /readyz", func() (bool, string) {
		resp, err := http.Get("http://" + in.http + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status + "\n" + in.proc.Output()
	}, testwait.Within(30*time.Second))
	return in
}

func (in *instance) env() map[string]string {
	return map[string]string{"COAP_ADDR": in.coap, "HTTP_ADDR": in.http}
}

func (in *instance) dial(t testing.TB) *udpClient.Conn {
	t.Helper()
	cc, err := udp.Dial(in.coap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func (in *instance) ws(t testing.TB, query string) *websocket.Conn {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + testToken}}
	ws, resp, err := websocket.DefaultDialer.Dial("ws://"+in.http+"/ws"+query, h)
	if err != nil {
		t.Fatalf("dial /ws%s: %v (%v)", query, err, resp)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return ws
}

// tryPost sends one uplink and returns its answer code (0 on no answer).
func tryPost(cc *udpClient.Conn, u *nbiotv1.Uplink, timeout time.Duration) codes.Code {
	b, _ := proto.Marshal(u)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
	if err != nil {
		return 0
	}
	return resp.Code()
}

// acceptDuringOutage starts coap-server on dataDir with a database that
// is not there and has n uplinks of device (counts 0 to n-1) answered
// 2.04: they wait in the embedded store's UPLINKS.
func acceptDuringOutage(t *testing.T, dataDir, device string, n int) *instance {
	t.Helper()
	down := "postgresql://postgres@127.0.0.1:" + strconv.Itoa(proctest.FreePort(t)) + "/nbiot?sslmode=disable"
	in := startProc(t, map[string]string{"DATABASE_URL": down, "DATA_DIR": dataDir})
	cc := in.dial(t)
	for i := range n {
		if code := tryPost(cc, &nbiotv1.Uplink{DeviceId: device, UplinkCount: uint32(i)}, 5*time.Second); code != codes.Changed {
			t.Fatalf("uplink %d during the outage: %v, want 2.04 (durable in the stream)", i, code)
		}
	}
	return in
}

// TestKill9DuringOutageLosesNothing: uplinks answered 2.04 while the
// database is unreachable survive a kill -9 of coap-server; after the
// restart every one of them is stored, exactly once.
func TestKill9DuringOutageLosesNothing(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	dataDir := t.TempDir()
	const n = 300
	first := acceptDuringOutage(t, dataDir, "KILL9", n)
	first.proc.Kill()

	env := first.env()
	env["DATABASE_URL"], env["DATA_DIR"] = dbURL, dataDir
	second := startProc(t, env)
	testwait.ForState(t, "every uplink stored after the restart", func() (bool, string) {
		got := countRows(t, dbURL, `select count(*) from activity where devid = 'KILL9'`)
		return got >= n, fmt.Sprintf("%d of %d stored\n%s", got, n, second.proc.Output())
	}, testwait.Within(60*time.Second))
	if got := countRows(t, dbURL, `select count(distinct uplink_count) from activity where devid = 'KILL9'`); got != n {
		t.Errorf("%d distinct uplinks stored, want %d", got, n)
	}
	// The live log has one entry per answered uplink, the last ones too,
	// whose entries the kill may have caught on their way (the restart
	// logs them from UPLINKS): up to a marker sent now.
	entries := entriesUntilMarker(t, second, "?since=0&deviceId=KILL9", &nbiotv1.Uplink{DeviceId: "KILL9", UplinkCount: 1_000_000})
	for i := range n {
		if k := fmt.Sprintf("KILL9/%d", i); entries[k] != 1 {
			t.Errorf("uplink %d has %d live-log entries, want 1", i, entries[k])
		}
	}
	second.proc.Stop(t)
	if got := countRows(t, dbURL, `select count(*) from activity where devid = 'KILL9' and uplink_count < 1000000`); got != n {
		t.Errorf("%d rows, want exactly %d (none twice)", got, n)
	}
}

// TestThreeInstancesOnOneNATS: three coap-server processes on one external
// nats-server (Debian's) form one system: every uplink is on every
// instance's /ws, a retransmission that reaches another instance makes no
// second row or entry, and an instance killed with uplinks in flight loses
// none it answered 2.04.
func TestThreeInstancesOnOneNATS(t *testing.T) {
	ns := natstest.Start(t)
	dbURL := pgtest.NewDB(t)
	var ins []*instance
	for i := range 3 {
		ins = append(ins, startProc(t, map[string]string{"NATS_URL": ns.URL, "DATABASE_URL": dbURL, "DATA_DIR": t.TempDir()}))
		_ = i
	}
	var wss []*websocket.Conn
	for _, in := range ins {
		wss = append(wss, in.ws(t, ""))
	}
	// 1. Uplinks to each instance are seen on every /ws.
	for i, in := range ins {
		cc := in.dial(t)
		for k := range 5 {
			if code := tryPost(cc, &nbiotv1.Uplink{DeviceId: "INST" + strconv.Itoa(i), UplinkCount: uint32(k)}, 5*time.Second); code != codes.Changed {
				t.Fatalf("uplink to instance %d: %v", i, code)
			}
		}
	}
	for j, ws := range wss {
		seen := map[string]int{}
		var last float64
		for range 15 {
			f := readFrame(t, ws)
			seen[f["deviceId"].(string)]++
			seq, _ := f["seq"].(float64)
			if seq <= last {
				t.Fatalf("/ws of instance %d: seq %v after %v", j, seq, last)
			}
			last = seq
		}
		for i := range 3 {
			if seen["INST"+strconv.Itoa(i)] != 5 {
				t.Fatalf("/ws of instance %d saw %v, want 5 entries of each instance's device", j, seen)
			}
		}
	}

	// 2. The same CON datagram to instance 0 and then to instance 1 (a
	// retransmission after the device's traffic moved): one row, one entry.
	payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "RETX", UplinkCount: 7})
	dgram := conDatagram(t, 0x4242, []byte{9, 9, 9, 9}, payload)
	for _, in := range ins[:2] {
		if code := rawExchange(t, in.coap, dgram); code != codes.Changed {
			t.Fatalf("copy to %s: %v, want 2.04", in.coap, code)
		}
	}
	f := readFrame(t, wss[2])
	if f["deviceId"] != "RETX" {
		t.Fatalf("frame %v, want the RETX uplink", f)
	}
	marker := tryPost(ins[2].dial(t), &nbiotv1.Uplink{DeviceId: "MARK", UplinkCount: 1}, 5*time.Second)
	if marker != codes.Changed {
		t.Fatal("marker uplink refused")
	}
	if f := readFrame(t, wss[2]); f["deviceId"] != "MARK" {
		t.Fatalf("after the retransmission came %v, want the next uplink (no second entry)", f)
	}
	// Both copies reach storage (the stream no longer recognises the
	// second: uplinks are batched); the database keeps the first and
	// records the second.
	testwait.ForState(t, "RETX stored once, its copy recorded as a duplicate", func() (bool, string) {
		rows := countRows(t, dbURL, `select count(*) from activity where devid = 'RETX'`)
		dups := countRows(t, dbURL, `select count(*) from uplink_duplicates where devid = 'RETX'`)
		return rows == 1 && dups == 1, fmt.Sprintf("%d rows, %d duplicates", rows, dups)
	}, testwait.Within(30*time.Second))

	// 3. Instance 2 is killed while a device keeps sending to it.
	var answered sync.Map // uplink_count → true when 2.04
	var sent atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		cc, err := udp.Dial(ins[2].coap)
		if err != nil {
			return
		}
		defer cc.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			if tryPost(cc, &nbiotv1.Uplink{DeviceId: "INFLIGHT", UplinkCount: uint32(i)}, 500*time.Millisecond) == codes.Changed {
				answered.Store(uint32(i), true)
			}
		}
	}()
	testwait.ForState(t, "uplinks flowing to instance 2", func() (bool, string) {
		return sent.Load() > 200, strconv.FormatInt(sent.Load(), 10)
	}, testwait.Within(30*time.Second))
	ins[2].proc.Kill()
	close(stop)
	<-done
	want := 0
	answered.Range(func(any, any) bool { want++; return true })
	if want == 0 {
		t.Fatal("no uplink was answered before the kill")
	}
	testwait.ForState(t, "every answered in-flight uplink stored by the survivors", func() (bool, string) {
		missing := 0
		stored := storedCounts(t, dbURL, "INFLIGHT")
		answered.Range(func(k, _ any) bool {
			if !stored[k.(uint32)] {
				missing++
			}
			return true
		})
		return missing == 0, fmt.Sprintf("%d of %d answered uplinks not stored", missing, want)
	}, testwait.Within(60*time.Second))
	if dup := countRows(t, dbURL, `select count(*) - count(distinct uplink_count) from activity where devid = 'INFLIGHT'`); dup != 0 {
		t.Errorf("%d uplinks stored twice", dup)
	}
	t.Logf("instance killed after %d sends, %d answered 2.04: all stored once", sent.Load(), want)
}

func storedCounts(t testing.TB, dbURL, dev string) map[uint32]bool {
	t.Helper()
	db, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		return nil // down: the caller polls again
	}
	defer db.Close(context.Background())
	rows, err := db.Query(context.Background(), `select uplink_count from activity where devid = $1`, dev)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[uint32]bool{}
	for rows.Next() {
		var c int64
		if err := rows.Scan(&c); err != nil {
			t.Fatal(err)
		}
		got[uint32(c)] = true
	}
	return got
}

// conDatagram encodes a CON POST /uplink with the given message ID and token.
func conDatagram(t testing.TB, mid uint16, token, payload []byte) []byte {
	t.Helper()
	var opts message.Options
	buf := make([]byte, 64)
	opts, _, err := opts.SetPath(buf, "/uplink")
	if err != nil {
		t.Fatal(err)
	}
	m := message.Message{Code: codes.POST, Token: token, Options: opts, Payload: payload, MessageID: int32(mid), Type: message.Confirmable}
	b := make([]byte, 512)
	n, err := coder.DefaultCoder.Encode(m, b)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

// rawExchange sends a datagram from a fresh socket, resending it every
// second as a device's CON timer would (a copy that arrives while the
// first is being answered is dropped; a later one gets the remembered
// answer), and returns the answer's code.
func rawExchange(t testing.TB, addr string, dgram []byte) codes.Code {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1500)
	n := 0
	for try := 0; ; try++ {
		if _, err := c.Write(dgram); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if n, err = c.Read(buf); err == nil {
			break
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() || try == 14 {
			t.Fatalf("no answer from %s in %d tries: %v", addr, try+1, err)
		}
	}
	var m message.Message
	if _, err := coder.DefaultCoder.Decode(buf[:n], &m); err != nil {
		t.Fatal(err)
	}
	return m.Code
}

// TestRetransmissionAcrossKill9StoredOnce: a CON answered 2.04 by a
// process that is then killed, retransmitted to its restart (the device
// never got the answer), is answered 2.04 again and makes no second row
// and no second live-log entry: the restarted process read the keys of
// the uplinks it took in the last EXCHANGE_LIFETIME back from the live log
// (ingest.Dedup.Restore), so the copy is recognised before anything is
// published, and nothing reaches storage twice (no duplicate is recorded).
func TestRetransmissionAcrossKill9StoredOnce(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	dataDir := t.TempDir()
	first := startProc(t, map[string]string{"DATABASE_URL": dbURL, "DATA_DIR": dataDir})
	payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "ACROSS", UplinkCount: 3})
	dgram := conDatagram(t, 0x5151, []byte{7, 7}, payload)
	if code := rawExchange(t, first.coap, dgram); code != codes.Changed {
		t.Fatalf("original: %v", code)
	}
	first.proc.Kill()

	env := first.env()
	env["DATABASE_URL"], env["DATA_DIR"] = dbURL, dataDir
	second := startProc(t, env)
	notices := second.ws(t, "?retransmissions=1")
	if code := rawExchange(t, second.coap, dgram); code != codes.Changed {
		t.Fatalf("retransmission after the restart: %v, want 2.04", code)
	}
	// Its notice names the entry logged before the restart, and comes at
	// once: it waited for the next entry of any device before (the feed
	// started after that entry and had delivered nothing).
	if f := readFrame(t, notices); f["type"] != "status" || f["deviceId"] != "ACROSS" {
		t.Fatalf("after the retransmission came %v, want its notice", f)
	}
	testwait.ForState(t, "ACROSS stored once", func() (bool, string) {
		rows := countRows(t, dbURL, `select count(*) from activity where devid = 'ACROSS'`)
		return rows == 1, fmt.Sprintf("%d rows\n%s", rows, second.proc.Output())
	}, testwait.Within(30*time.Second))
	ws := second.ws(t, "?since=0")
	if f := readFrame(t, ws); f["deviceId"] != "ACROSS" {
		t.Fatalf("history: %v, want the ACROSS entry", f)
	}
	marker := tryPost(second.dial(t), &nbiotv1.Uplink{DeviceId: "MARK", UplinkCount: 1}, 5*time.Second)
	if marker != codes.Changed {
		t.Fatal("marker uplink refused")
	}
	if f := readFrame(t, ws); f["deviceId"] != "MARK" {
		t.Fatalf("after the ACROSS entry came %v, want the marker (no second entry)", f)
	}
	// The marker went through UPLINKS after the copy would have: once it
	// is stored, a copy that reached storage would have been recorded.
	testwait.ForState(t, "the marker stored", func() (bool, string) {
		n := countRows(t, dbURL, `select count(*) from activity where devid = 'MARK'`)
		return n == 1, fmt.Sprintf("%d rows", n)
	}, testwait.Within(30*time.Second))
	if dups := countRows(t, dbURL, `select count(*) from uplink_duplicates where devid = 'ACROSS'`); dups != 0 {
		t.Errorf("the copy reached storage (%d duplicates recorded): the restarted process did not recognise it", dups)
	}
}

// TestKill9UnderLoadLosesNoEntry: coap-server killed (kill -9) while 16
// devices send flat out with the database up and an fsync per message
// (NATS_SYNC_ALWAYS, where an entry lags its answer most): after the
// restart every uplink answered 2.04 has exactly one row and exactly one
// live-log entry. Each entry follows its answer; storage, which writes
// what it fetched at once, must not delete an uplink from UPLINKS before
// its entry is stored, or the kill leaves it without one for good.
func TestKill9UnderLoadLosesNoEntry(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	dataDir := t.TempDir()
	env := map[string]string{"DATABASE_URL": dbURL, "DATA_DIR": dataDir, "NATS_SYNC_ALWAYS": "true"}
	first := startProc(t, env)
	const devices, killAt = 16, 3000
	var (
		mu       sync.Mutex
		answered = make(map[string]bool) // "device/count"
		total    atomic.Int64
		wg       sync.WaitGroup
		killed   atomic.Bool
	)
	t.Cleanup(func() { killed.Store(true) }) // a failed wait stops the devices too
	for d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, err := udp.Dial(first.coap)
			if err != nil {
				t.Error(err)
				return
			}
			defer cc.Close()
			dev := fmt.Sprintf("LOAD%02d", d)
			for i := 0; ; i++ {
				if tryPost(cc, &nbiotv1.Uplink{DeviceId: dev, UplinkCount: uint32(i)}, 2*time.Second) != codes.Changed {
					if killed.Load() {
						return
					}
					// Not answered in time (an fsync stalled on a busy
					// disk) or refused: not counted; the next one goes.
					continue
				}
				mu.Lock()
				answered[fmt.Sprintf("%s/%d", dev, i)] = true
				mu.Unlock()
				total.Add(1)
			}
		}()
	}
	testwait.For(t, fmt.Sprintf("%d uplinks answered", killAt), func() bool { return total.Load() >= killAt }, testwait.Within(60*time.Second))
	killed.Store(true)
	first.proc.Kill()
	wg.Wait()

	env["COAP_ADDR"], env["HTTP_ADDR"] = first.coap, first.http
	second := startProc(t, env)
	rows := func() map[string]int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		got := make(map[string]int)
		rs, err := c.Query(ctx, `select devid, uplink_count, count(*) from activity where devid like 'LOAD%' group by 1, 2`)
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var dev string
			var count, n int
			if err := rs.Scan(&dev, &count, &n); err != nil {
				t.Fatal(err)
			}
			got[fmt.Sprintf("%s/%d", dev, count)] = n
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		return got
	}
	testwait.ForState(t, "every answered uplink stored after the restart", func() (bool, string) {
		got := rows()
		missing := 0
		for k := range answered {
			if got[k] == 0 {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d answered uplinks not stored", missing, len(answered))
	}, testwait.Within(60*time.Second))
	for k, n := range rows() {
		if n != 1 {
			t.Errorf("uplink %s stored %d times", k, n)
		}
	}

	// Every entry, up to a marker sent now.
	entries := entriesUntilMarker(t, second, "?since=0", &nbiotv1.Uplink{DeviceId: "LOADMARK", UplinkCount: 1})
	lost := 0
	for k := range answered {
		if entries[k] == 0 {
			lost++
		}
	}
	for k, n := range entries {
		if n > 1 {
			t.Errorf("uplink %s has %d live-log entries", k, n)
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d uplinks answered 2.04 have no live-log entry after the kill", lost, len(answered))
	}
	t.Logf("%d uplinks answered before the kill, %d entries after the restart", len(answered), len(entries))
}

// entriesUntilMarker reads in's /ws with query from its start and counts
// the uplink entries by "device/uplink_count", up to the entry of marker,
// which it sends once subscribed.
func entriesUntilMarker(t *testing.T, in *instance, query string, marker *nbiotv1.Uplink) map[string]int {
	t.Helper()
	ws := in.ws(t, query)
	if code := tryPost(in.dial(t), marker, 5*time.Second); code != codes.Changed {
		t.Fatalf("marker: %v", code)
	}
	entries := make(map[string]int)
	for {
		f := readFrame(t, ws)
		if f["type"] != "uplink" {
			continue
		}
		dev, _ := f["deviceId"].(string)
		c, _ := f["data"].(map[string]any)["uplink_count"].(float64)
		if dev == marker.GetDeviceId() && uint32(c) == marker.GetUplinkCount() {
			return entries
		}
		entries[fmt.Sprintf("%s/%d", dev, int(c))]++
	}
}

// TestMovingToNATSURLLosesNothing: an operator outgrows one machine.
// Uplinks answered 2.04 by the embedded server while the database was
// down still wait in DATA_DIR when coap-server starts again on a cluster
// (NATS_URL) with the database back: every one is stored, once. Before,
// nothing read the embedded store once NATS_URL was set, and none was.
func TestMovingToNATSURLLosesNothing(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	dataDir := t.TempDir()
	const n = 200
	first := acceptDuringOutage(t, dataDir, "MOVED", n)
	first.proc.Kill() // a stop drains for 25 s against the dead database first

	env := first.env()
	env["DATABASE_URL"], env["DATA_DIR"], env["NATS_URL"] = dbURL, dataDir, natstest.Start(t).URL
	second := startProc(t, env)
	testwait.ForState(t, "every uplink of the embedded store stored from the cluster", func() (bool, string) {
		got := countRows(t, dbURL, `select count(*) from activity where devid = 'MOVED'`)
		return got >= n, fmt.Sprintf("%d of %d stored\n%s", got, n, second.proc.Output())
	}, testwait.Within(60*time.Second))
	second.proc.Stop(t)
	if got := countRows(t, dbURL, `select count(distinct uplink_count) from activity where devid = 'MOVED'`); got != n {
		t.Errorf("%d distinct uplinks stored, want %d", got, n)
	}
	if got := countRows(t, dbURL, `select count(*) from activity where devid = 'MOVED'`); got != n {
		t.Errorf("%d rows, want exactly %d (none twice)", got, n)
	}
	if out := second.proc.Output(); !strings.Contains(out, "moved the uplinks the embedded store still held to NATS_URL") {
		t.Errorf("the move is not logged:\n%s", out)
	}
}
