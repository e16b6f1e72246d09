package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	coapapp "github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

// startCoAPAt runs coap-server with its JetStream store in dataDir, so a
// restart on the same directory keeps the live log (and its positions).
func startCoAPAt(t testing.TB, coapAddr, httpAddr, dataDir string) *coapapp.App {
	t.Helper()
	cfg, err := coapapp.FromEnv(func(k string) string {
		return map[string]string{"COAP_ADDR": coapAddr, "HTTP_ADDR": httpAddr, "WS_TOKEN": wsToken, "DATA_DIR": dataDir}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	a := coapapp.New(cfg, discard())
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCoAP(t, a) }) // Shutdown is idempotent
	return a
}

// entry is a frame as a browser sees it, with its seq when it has one.
type entry struct {
	Seq      *uint64        `json:"seq"`
	DeviceID string         `json:"deviceId"`
	Type     string         `json:"type"`
	Message  string         `json:"message"`
	Data     map[string]any `json:"data"`
	raw      string
}

// what is the entry in short: "u<uplink_count>", "lost", "restored",
// "recovered:false", "retransmission" or the message (spaces as _).
func (e entry) what() string {
	switch {
	case e.Type == "uplink":
		return "u" + fmt.Sprint(e.Data["uplink_count"])
	case e.Data["upstream"] != nil:
		return e.Data["upstream"].(string)
	case e.Data["recovered"] == false:
		return "recovered:false"
	case e.Data["retransmission"] != nil:
		return "retransmission"
	default:
		return strings.ReplaceAll(e.Message, " ", "_")
	}
}

// dialFrom opens /device-logs with extra query parameters (AUTH_DISABLED
// relays): the connection, or the refusal's status and body.
func dialFrom(t testing.TB, r *app.App, device, query string) (*websocket.Conn, int, string) {
	t.Helper()
	u := "ws://" + r.HTTPAddr().String() + "/device-logs?deviceId=" + device
	if query != "" {
		u += "&" + query
	}
	ws, resp, err := (&websocket.Dialer{HandshakeTimeout: 10 * time.Second}).Dial(u, nil)
	if err != nil {
		if resp == nil {
			t.Fatalf("dial relay: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		return nil, resp.StatusCode, string(b)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return ws, resp.StatusCode, ""
}

func mustDialFrom(t testing.TB, r *app.App, device, query string) *websocket.Conn {
	t.Helper()
	ws, code, body := dialFrom(t, r, device, query)
	if ws == nil {
		t.Fatalf("dial %s?%s: HTTP %d %s", device, query, code, body)
	}
	return ws
}

// readEntries reads until it has seen n frames.
func readEntries(t testing.TB, ws *websocket.Conn, n int) []entry {
	t.Helper()
	out := make([]entry, 0, n)
	for len(out) < n {
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("after %v: read: %v", whats(out), err)
		}
		var e entry
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		e.raw = string(b)
		out = append(out, e)
	}
	return out
}

// noMore checks that nothing else arrives within a short read (a repeat
// would be queued right behind what was read).
func noMore(t testing.TB, ws *websocket.Conn) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, b, err := ws.ReadMessage(); err == nil {
		t.Fatalf("unexpected frame %s", b)
	}
}

func whats(es []entry) string {
	w := make([]string, len(es))
	for i, e := range es {
		w[i] = e.what()
	}
	return strings.Join(w, " ")
}

// expect reads len(want) frames and checks them, and that the entries with
// a seq come in increasing seq order.
func expect(t testing.TB, ws *websocket.Conn, want string) []entry {
	t.Helper()
	es := readEntries(t, ws, len(strings.Fields(want)))
	if got := whats(es); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	var last uint64
	for _, e := range es {
		if e.Seq != nil {
			if *e.Seq <= last {
				t.Fatalf("seq %d after %d: %s", *e.Seq, last, whats(es))
			}
			last = *e.Seq
		}
	}
	return es
}

func seqOf(t testing.TB, e entry) uint64 {
	t.Helper()
	if e.Seq == nil {
		t.Fatalf("no seq: %s", e.raw)
	}
	return *e.Seq
}

func itoa(n uint64) string { b, _ := json.Marshal(n); return string(b) }

// TestSinceAndTailPerBrowser: each browser gets its own start over one
// shared upstream: tail and since served from the relay's history, the
// others by a dedicated upstream that then merges back.
func TestSinceAndTailPerBrowser(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	cc := dialCoAP(t, c)
	for i := range 5 {
		sendUplink(t, cc, "DEV-H", uint32(i+1))
	}
	a := mustDialFrom(t, r, "DEV-H", "tail=3")
	es := expect(t, a, "u3 u4 u5")
	s3 := seqOf(t, es[0])

	b := mustDialFrom(t, r, "DEV-H", "tail=2")
	expect(t, b, "u4 u5")
	since := mustDialFrom(t, r, "DEV-H", "since="+itoa(s3))
	expect(t, since, "u4 u5")
	live := mustDialFrom(t, r, "DEV-H", "")
	if n := counter(t, r.Metrics, "nbiot_relay_history_starts_total", "served", "ring"); n != 2 {
		t.Errorf("starts from the ring %v, want 2", n)
	}
	// Older than the relay's history, and deeper than it: coap-server answers.
	all := mustDialFrom(t, r, "DEV-H", "since=0")
	expect(t, all, "u1 u2 u3 u4 u5")
	deep := mustDialFrom(t, r, "DEV-H", "tail=10")
	expect(t, deep, "u1 u2 u3 u4 u5")
	if n := counter(t, r.Metrics, "nbiot_relay_history_starts_total", "served", "dedicated"); n != 2 {
		t.Errorf("dedicated starts %v, want 2", n)
	}
	testwait.For(t, "the dedicated upstreams to merge into the shared one", func() bool {
		return gauge(t, r.Metrics, "nbiot_relay_upstreams_dedicated") == 0 && gauge(t, c.Metrics, "nbiot_ws_subscribers") == 1
	})
	sendUplink(t, cc, "DEV-H", 6)
	for _, ws := range []*websocket.Conn{a, b, since, live, all, deep} {
		expect(t, ws, "u6")
		noMore(t, ws)
	}
}

func TestSinceAndTailRefusals(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	for q, want := range map[string]string{
		"since=abc":      "since must be",
		"since=-1":       "since must be",
		"since=":         "since must be",
		"since=1.5":      "since must be",
		"tail=-1":        "tail must be an integer from 0 to 1000",
		"tail=1001":      "tail must be an integer from 0 to 1000",
		"tail=ten":       "tail must be",
		"since=1&tail=1": "not both",
	} {
		ws, code, body := dialFrom(t, r, "DEV-H", q)
		if ws != nil || code != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("%s: HTTP %d %q, want 400 saying %q", q, code, body, want)
		}
	}
	if n := counter(t, r.Metrics, "nbiot_relay_rejected_total", "reason", "since_tail"); n != 8 {
		t.Errorf("rejected{since_tail} %v, want 8", n)
	}
	if r.WatchedDevices() != 0 {
		t.Error("a refused start opened an upstream")
	}
	// The limits themselves are accepted.
	mustDialFrom(t, r, "DEV-H", "tail=1000")
	mustDialFrom(t, r, "DEV-H", "since=0")
	mustDialFrom(t, r, "DEV-H", "tail=0")
}

// TestRelayResumesAcrossCoAPServerRestart: coap-server stops (uplinks are
// refused meanwhile) and starts again on the same DATA_DIR and ports;
// uplinks sent right after, before the relay is back, reach the open
// browser exactly once, in order, after lost and restored.
func TestRelayResumesAcrossCoAPServerRestart(t *testing.T) {
	dir := t.TempDir()
	c1 := startCoAPAt(t, "127.0.0.1:0", "127.0.0.1:0", dir)
	coapAddr, httpAddr := c1.CoAPAddr().String(), c1.HTTPAddr().String()
	r := startRelay(t, c1, map[string]string{"AUTH_DISABLED": "true"}, func(cfg *app.Config) {
		// Reconnect attempts far apart: the uplinks below are sent before
		// the relay is back, so they must come from the resumed history.
		cfg.UpstreamBackOff = func() backoff.BackOff { return backoff.NewConstantBackOff(300 * time.Millisecond) }
	})
	ws := mustDialFrom(t, r, "DEV-R", "tail=100")
	cc := dialCoAP(t, c1)
	for i := range 5 {
		sendUplink(t, cc, "DEV-R", uint32(i+1))
	}
	expect(t, ws, "u1 u2 u3 u4 u5")

	stopCoAP(t, c1)
	expect(t, ws, "lost")
	c2 := startCoAPAt(t, coapAddr, httpAddr, dir)
	cc2 := dialCoAP(t, c2)
	for i := range 5 {
		sendUplink(t, cc2, "DEV-R", uint32(i+6))
	}
	expect(t, ws, "restored u6 u7 u8 u9 u10")
	sendUplink(t, cc2, "DEV-R", 11)
	expect(t, ws, "u11")
	noMore(t, ws)
	if n := counter(t, r.Metrics, "nbiot_relay_frames_dropped_total", "reason", "repeat"); n != 0 {
		t.Logf("%v repeats dropped", n)
	}
	// A browser arriving now with the page's tail gets all eleven from the relay.
	late := mustDialFrom(t, r, "DEV-R", "tail=100")
	expect(t, late, "u1 u2 u3 u4 u5 u6 u7 u8 u9 u10 u11")
}

// TestUpstreamStreamResetIsForwarded: coap-server comes back with an empty
// store (its DATA_DIR lost): the relay's since= is beyond the new stream,
// so the browser gets coap-server's recovered:false, then the new entries,
// whose lower positions are not taken for repeats.
func TestUpstreamStreamResetIsForwarded(t *testing.T) {
	c1 := startCoAPAt(t, "127.0.0.1:0", "127.0.0.1:0", t.TempDir())
	coapAddr, httpAddr := c1.CoAPAddr().String(), c1.HTTPAddr().String()
	r := startRelay(t, c1, map[string]string{"AUTH_DISABLED": "true"}, nil)
	ws := mustDialFrom(t, r, "DEV-Z", "tail=100")
	cc := dialCoAP(t, c1)
	for i := range 3 {
		sendUplink(t, cc, "DEV-OTHER", uint32(i)) // positions go up for every device
		sendUplink(t, cc, "DEV-Z", uint32(i+1))
	}
	es := expect(t, ws, "u1 u2 u3")
	stopCoAP(t, c1)
	c2 := startCoAPAt(t, coapAddr, httpAddr, t.TempDir())
	expect(t, ws, "lost restored recovered:false")
	sendUplink(t, dialCoAP(t, c2), "DEV-Z", 4)
	fresh := expect(t, ws, "u4")
	if seqOf(t, fresh[0]) >= seqOf(t, es[2]) {
		t.Errorf("the new stream's position %d is not below the old %d: the test does not exercise a reset", seqOf(t, fresh[0]), seqOf(t, es[2]))
	}
	if n := counter(t, r.Metrics, "nbiot_relay_upstream_resets_total", "", ""); n != 1 {
		t.Errorf("resets %v, want 1", n)
	}
	noMore(t, ws)
}

// TestRetransmissionReportsReachBrowsers: the relay asks coap-server for
// its retransmission reports (not retained, no seq); a CON copy of an
// accepted uplink from a new address (a NAT rebinding) reaches the browser
// as one report naming the original's seq, and moves no position.
func TestRetransmissionReportsReachBrowsers(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	ws := mustDialFrom(t, r, "DEV-T", "tail=0")
	temp := float32(20)
	payload, err := proto.Marshal(&nbiotv1.Uplink{DeviceId: "DEV-T", UplinkCount: 1, Temperature: &temp})
	if err != nil {
		t.Fatal(err)
	}
	// CON POST /uplink, MID 0x1234, token 0xAB, Content-Format 42.
	dgram := append([]byte{0x41, 0x02, 0x12, 0x34, 0xAB, 0xB6}, "uplink"...)
	dgram = append(append(dgram, 0x11, 42, 0xFF), payload...)
	for range 2 { // two sockets: two source ports, as after a NAT rebinding
		u, err := net.Dial("udp", c.CoAPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = u.Write(dgram)
		_ = u.SetReadDeadline(time.Now().Add(5 * time.Second))
		ack := make([]byte, 1500)
		if n, err := u.Read(ack); err != nil || n < 4 || ack[1] != 0x44 { // 2.04
			t.Fatalf("answer %x %v, want a 2.04", ack[:max(n, 0)], err)
		}
		_ = u.Close()
	}
	es := expect(t, ws, "u1 retransmission")
	rt, _ := es[1].Data["retransmission"].(map[string]any)
	if es[1].Seq != nil || rt["of_seq"] != float64(seqOf(t, es[0])) {
		t.Fatalf("report %s, want no seq and of_seq %d", es[1].raw, seqOf(t, es[0]))
	}
	sendUplink(t, dialCoAP(t, c), "DEV-T", 2)
	expect(t, ws, "u2")
	noMore(t, ws)
}

// TestRelayResumesWhenItsLinkIsCut: coap-server stays up while the relay's
// link is cut and refused for a while (between them, a TCP proxy); what
// was published meanwhile arrives once.
func TestRelayResumesWhenItsLinkIsCut(t *testing.T) {
	c := startCoAP(t, "", "")
	p := newCutProxy(t, c.HTTPAddr().String())
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true", "UPSTREAM_URL": "ws://" + p.addr() + "/ws"}, nil)
	ws := mustDialFrom(t, r, "DEV-K", "tail=100")
	cc := dialCoAP(t, c)
	for i := range 3 {
		sendUplink(t, cc, "DEV-K", uint32(i+1))
	}
	expect(t, ws, "u1 u2 u3")
	p.cut(true)
	expect(t, ws, "lost")
	for i := range 5 {
		sendUplink(t, cc, "DEV-K", uint32(i+4))
	}
	testwait.For(t, "refused redials", func() bool {
		return counter(t, r.Metrics, "nbiot_relay_upstream_dial_failures_total", "", "") >= 2
	})
	p.cut(false)
	expect(t, ws, "restored u4 u5 u6 u7 u8")
	sendUplink(t, cc, "DEV-K", 9)
	expect(t, ws, "u9")
	noMore(t, ws)
}

// cutProxy forwards TCP to coap-server's HTTP port; cut(true) closes every
// connection and refuses new ones until cut(false): the relay's link is
// lost while coap-server itself keeps running.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
}

func newCutProxy(t testing.TB, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	t.Cleanup(func() { _ = ln.Close(); p.cut(true) })
	go p.serve()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			_ = in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			p.mu.Unlock()
			_ = in.Close()
			continue
		}
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go func() { _, _ = io.Copy(out, in); _ = out.Close(); _ = in.Close() }()
		go func() { _, _ = io.Copy(in, out); _ = out.Close(); _ = in.Close() }()
	}
}

// retarget sends later connections to another address.
func (p *cutProxy) retarget(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
}

func (p *cutProxy) cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			_ = c.Close()
			delete(p.conns, c)
		}
	}
}

// TestLongCatchUpIsNotCutAsSlow: 1,000 retained entries (coap-server's
// default per-device retention, the most a since can bring) reach, without
// the slow-client cut, a browser that opens the device's link with since=0,
// one that starts from the relay's ring while that link's history is
// still arriving, and one that gets a dedicated upstream for it; each
// queue fills before its socket writes anything.
func TestLongCatchUpIsNotCutAsSlow(t *testing.T) {
	const n = 1000
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	cc := dialCoAP(t, c)
	for i := range n {
		sendUplink(t, cc, "DEV-L", uint32(i))
	}
	want := make([]string, 0, n+1)
	for i := range n + 1 {
		want = append(want, "u"+fmt.Sprint(i))
	}
	first := mustDialFrom(t, r, "DEV-L", "since=0")
	during := mustDialFrom(t, r, "DEV-L", "since=0") // most likely from the ring, mid-history
	expect(t, first, strings.Join(want[:n], " "))
	dedicated := mustDialFrom(t, r, "DEV-L", "since=0") // the ring keeps 100 now
	if got := counter(t, r.Metrics, "nbiot_relay_history_starts_total", "served", "dedicated"); got < 1 {
		t.Errorf("dedicated starts %v, want at least 1", got)
	}
	expect(t, during, strings.Join(want[:n], " "))
	expect(t, dedicated, strings.Join(want[:n], " "))
	sendUplink(t, cc, "DEV-L", n)
	for _, ws := range []*websocket.Conn{first, during, dedicated} {
		expect(t, ws, want[n])
	}
	if got := counter(t, r.Metrics, "nbiot_relay_disconnects_total", "reason", "slow"); got != 0 {
		t.Errorf("%v browsers cut as slow", got)
	}
	if got := counter(t, r.Metrics, "nbiot_relay_disconnects_total", "reason", "memory"); got != 0 {
		t.Errorf("%v browsers cut for the queue budget", got)
	}
	// Every frame read: nothing is charged to the browsers' queues (each
	// frame's bytes are given back once written).
	testwait.For(t, "the queued bytes given back", func() bool { return gauge(t, r.Metrics, "nbiot_relay_queued_bytes") == 0 })
}
