package ingest_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/stream/streamtest"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// startLean serves h on a loopback port until the test ends.
func startLean(t testing.TB, h *ingest.Handler, cfg ingest.LeanConfig) (*ingest.LeanServer, *ingest.LeanMetrics) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = ingest.NewLeanMetrics(prometheus.NewRegistry())
	}
	s, err := ingest.NewLeanServer(h, conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s, cfg.Metrics
}

func newHandler(t testing.TB, live ingest.Stream) *ingest.Handler {
	t.Helper()
	return &ingest.Handler{Stream: live, Logger: discard, Metrics: ingest.NewMetrics(prometheus.NewRegistry()),
		Dedup: ingest.NewDedup(0, 0)}
}

// peer is a raw CoAP endpoint: it sends and reads single datagrams, so a
// test sees exactly what goes on the wire.
type peer struct {
	t    testing.TB
	conn *net.UDPConn
}

func dialPeer(t testing.TB, s *ingest.LeanServer) *peer {
	t.Helper()
	c, err := net.DialUDP("udp", nil, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &peer{t: t, conn: c}
}

func (p *peer) sendRaw(b []byte) {
	p.t.Helper()
	if _, err := p.conn.Write(b); err != nil {
		p.t.Fatal(err)
	}
}

func (p *peer) send(m message.Message) {
	p.t.Helper()
	p.sendRaw(encode(p.t, m))
}

// recv returns the next datagram, failing the test after 5 s.
func (p *peer) recv() message.Message {
	p.t.Helper()
	buf := make([]byte, 2048)
	_ = p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := p.conn.Read(buf)
	if err != nil {
		p.t.Fatalf("no answer: %v", err)
	}
	m := message.Message{Options: make(message.Options, 0, 8)}
	if _, err := coder.DefaultCoder.Decode(buf[:n], &m); err != nil {
		p.t.Fatalf("answer undecodable: %v (% x)", err, buf[:n])
	}
	return m
}

func encode(t testing.TB, m message.Message) []byte {
	t.Helper()
	size, err := coder.DefaultCoder.Size(m)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	if _, err := coder.DefaultCoder.Encode(m, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// uplinkMsg is a POST /uplink of u.
func uplinkMsg(t testing.TB, typ message.Type, mid int32, token []byte, u *nbiotv1.Uplink) message.Message {
	t.Helper()
	payload, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	return message.Message{Type: typ, Code: codes.POST, MessageID: mid, Token: token, Payload: payload,
		Options: message.Options{{ID: message.URIPath, Value: []byte("uplink")}, {ID: message.ContentFormat, Value: []byte{42}}}}
}

func ping(mid int32) message.Message {
	return message.Message{Type: message.Confirmable, Code: codes.Empty, MessageID: mid}
}

// RFC 7252 §4 on the wire: each kind of datagram gets the answer the
// section cited asks for. One worker keeps answers in order, so "nothing
// sent" is seen as the next answer being the following ping's RST.
func TestLeanRFC7252(t *testing.T) {
	live := streamtest.New(t, stream.Config{})
	s, lm := startLean(t, newHandler(t, live), ingest.LeanConfig{Workers: 1})
	p := dialPeer(t, s)
	dev := &nbiotv1.Uplink{DeviceId: "LEAN-1", UplinkCount: 1}

	t.Run("CON gets a piggybacked ACK (§5.2.1)", func(t *testing.T) {
		p.send(uplinkMsg(t, message.Confirmable, 100, []byte{1, 2, 3}, dev))
		got := p.recv()
		if got.Type != message.Acknowledgement || got.MessageID != 100 || got.Code != codes.Changed || string(got.Token) != "\x01\x02\x03" {
			t.Fatalf("got %v", &got)
		}
	})
	t.Run("NON gets a NON with its own message ID (§5.2.3)", func(t *testing.T) {
		u := &nbiotv1.Uplink{DeviceId: "LEAN-1", UplinkCount: 2}
		p.send(uplinkMsg(t, message.NonConfirmable, 101, []byte{4}, u))
		got := p.recv()
		if got.Type != message.NonConfirmable || got.MessageID == 101 || got.Code != codes.Changed || string(got.Token) != "\x04" {
			t.Fatalf("got %v", &got)
		}
	})
	t.Run("CoAP ping gets RST (§4.3)", func(t *testing.T) {
		p.send(ping(102))
		if got := p.recv(); got.Type != message.Reset || got.MessageID != 102 || got.Code != codes.Empty || len(got.Token) != 0 {
			t.Fatalf("got %v", &got)
		}
	})
	t.Run("unknown critical option in a CON: 4.02 (§5.4.1)", func(t *testing.T) {
		m := uplinkMsg(t, message.Confirmable, 103, []byte{5}, dev)
		m.Options = append(message.Options{{ID: 9, Value: []byte{1}}}, m.Options...) // ascending (§3.1)
		p.send(m)
		if got := p.recv(); got.Type != message.Acknowledgement || got.MessageID != 103 || got.Code != codes.BadOption {
			t.Fatalf("got %v", &got)
		}
	})
	ignored := []struct {
		name string
		b    []byte
	}{
		{"unexpected ACK is ignored (§4.2)", encode(t, message.Message{Type: message.Acknowledgement, Code: codes.Changed, MessageID: 7})},
		{"RST for nothing we sent is ignored (§4.3)", encode(t, message.Message{Type: message.Reset, Code: codes.Empty, MessageID: 8})},
		{"shorter than a header is ignored (§3)", []byte{0x40, 0x01}},
		{"unknown version is ignored (§3)", []byte{0x80, 0x01, 0, 1}},
		{"Empty NON is ignored (§4.3)", []byte{0x50, 0x00, 0, 9}},
		{"malformed NON is ignored (§4.3)", []byte{0x50, 0x02, 0, 10, 0xff}},
		{"NON response is ignored (§4.3)", encode(t, message.Message{Type: message.NonConfirmable, Code: codes.Content, MessageID: 11})},
	}
	for i, tc := range ignored {
		t.Run(tc.name, func(t *testing.T) {
			p.sendRaw(tc.b)
			mid := int32(200 + i)
			p.send(ping(mid))
			if got := p.recv(); got.Type != message.Reset || got.MessageID != mid {
				t.Fatalf("got %v, want only the RST of the ping", &got)
			}
		})
	}
	rejected := []struct {
		name string
		b    []byte
	}{
		{"malformed CON gets RST (§4.2)", []byte{0x40, 0x02, 0x01, 0x2c, 0xff}}, // payload marker, no payload
		{"token length 9 gets RST (§3)", []byte{0x49, 0x02, 0x01, 0x2d, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{"CON response gets RST (§4.2)", encode(t, message.Message{Type: message.Confirmable, Code: codes.Content, MessageID: 302})},
		{"reserved class gets RST (§4.2)", encode(t, message.Message{Type: message.Confirmable, Code: codes.Code(7 << 5), MessageID: 303})},
		{"Empty CON with a token gets RST (§4.1)", []byte{0x41, 0x00, 0x01, 0x30, 7}},
	}
	for i, tc := range rejected {
		t.Run(tc.name, func(t *testing.T) {
			p.sendRaw(tc.b)
			if got := p.recv(); got.Type != message.Reset || got.MessageID != int32(300+i) || len(got.Token) != 0 {
				t.Fatalf("got %v, want RST for %d", &got, 300+i)
			}
		})
	}
	t.Run("No-Response 2.xx: an empty ACK (RFC 7967)", func(t *testing.T) {
		m := uplinkMsg(t, message.Confirmable, 400, []byte{6}, &nbiotv1.Uplink{DeviceId: "LEAN-1", UplinkCount: 3})
		m.Options = append(m.Options, message.Option{ID: message.NoResponse, Value: []byte{2}})
		p.send(m)
		if got := p.recv(); got.Type != message.Acknowledgement || got.MessageID != 400 || got.Code != codes.Empty {
			t.Fatalf("got %v", &got)
		}
	})
	if n := testutil.ToFloat64(lm.QueueFull()); n != 0 {
		t.Errorf("queue_full = %v", n)
	}
	if n := len(live.All()); n != 3 {
		t.Errorf("%d live-log entries, want 3 (the accepted uplinks)", n)
	}
}

// gated is a stream whose PublishUplink waits for release, so a test can
// hold an uplink inside a worker.
type gated struct {
	*streamtest.Recorder
	entered chan struct{}
	release chan struct{}
	calls   atomic.Int32
}

func newGated(t testing.TB) *gated {
	return &gated{Recorder: streamtest.New(t, stream.Config{}), entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (g *gated) PublishUplink(ctx context.Context, a uplink.Accepted, payload []byte) error {
	g.calls.Add(1)
	g.entered <- struct{}{}
	<-g.release
	return g.Recorder.PublishUplink(ctx, a, payload)
}

func (g *gated) waitEntered(t testing.TB) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("no uplink reached the stream")
	}
}

// §4.5: a retransmission arriving while the first copy is still in the
// worker is not processed again; the one answer answers both.
func TestLeanRetransmissionWhileInFlight(t *testing.T) {
	g := newGated(t)
	s, lm := startLean(t, newHandler(t, g), ingest.LeanConfig{})
	p := dialPeer(t, s)
	m := uplinkMsg(t, message.Confirmable, 500, []byte{9}, &nbiotv1.Uplink{DeviceId: "LEAN-2", UplinkCount: 1})
	p.send(m)
	g.waitEntered(t)
	p.send(m)
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(lm.InflightDuplicates()) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the copy was not recognised as in flight")
		}
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	if got := p.recv(); got.Type != message.Acknowledgement || got.MessageID != 500 || got.Code != codes.Changed {
		t.Fatalf("got %v", &got)
	}
	// Answered again from Dedup once out of flight: same answer, one publish.
	p.send(m)
	if got := p.recv(); got.MessageID != 500 || got.Code != codes.Changed {
		t.Fatalf("got %v", &got)
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("PublishUplink called %d times, want 1", n)
	}
}

// The read loop never waits for a worker: with the one worker busy and the
// queue full, a datagram is dropped and counted, and what was queued is
// answered once the worker is free.
func TestLeanQueueFullDrops(t *testing.T) {
	g := newGated(t)
	s, lm := startLean(t, newHandler(t, g), ingest.LeanConfig{Workers: 1, QueueLen: 1})
	p := dialPeer(t, s)
	send := func(mid int32) {
		p.send(uplinkMsg(t, message.Confirmable, mid, nil, &nbiotv1.Uplink{DeviceId: "LEAN-3", UplinkCount: uint32(mid)}))
	}
	send(600)
	g.waitEntered(t) // 600 holds the worker
	send(601)        // queued
	send(602)        // dropped: the queue holds one
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(lm.QueueFull()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("queue_full = %v, want 1", testutil.ToFloat64(lm.QueueFull()))
		}
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	got := map[int32]bool{p.recv().MessageID: true, p.recv().MessageID: true}
	if !got[600] || !got[601] {
		t.Errorf("answered %v, want 600 and 601", got)
	}
	// The device retransmits the dropped CON (§4.2) and it is answered.
	send(602)
	if m := p.recv(); m.MessageID != 602 || m.Code != codes.Changed {
		t.Errorf("retransmission got %v", &m)
	}
}

// The byte bound bites before the count: a datagram that would take the
// queue past QueueBytes is dropped. A small datagram is charged 848 B (its
// 512-byte buffer and 336 B), so 1,000 B hold one.
func TestLeanQueueBytesBound(t *testing.T) {
	g := newGated(t)
	s, lm := startLean(t, newHandler(t, g), ingest.LeanConfig{Workers: 1, QueueLen: 100, QueueBytes: 1000, SourceBytes: 1 << 20})
	p := dialPeer(t, s)
	m := uplinkMsg(t, message.Confirmable, 700, nil, &nbiotv1.Uplink{DeviceId: "LEAN-4", UplinkCount: 1})
	p.send(m)
	g.waitEntered(t) // the worker holds 700; its bytes left the queue
	big := uplinkMsg(t, message.Confirmable, 701, nil, &nbiotv1.Uplink{DeviceId: "LEAN-4", UplinkCount: 2, Config: &nbiotv1.DeviceConfig{HwVersion: string(make([]byte, 60)), FwVersion: string(make([]byte, 60))}})
	p.send(big) // 848 B charged: queued
	big.MessageID = 702
	p.send(big) // past 1,000 B: dropped
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(lm.QueueFull()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("queue_full = %v, want 1", testutil.ToFloat64(lm.QueueFull()))
		}
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	_, _ = p.recv(), p.recv()
}

// countingStream counts the uplinks handed to the stream.
type countingStream struct {
	*streamtest.Recorder
	calls atomic.Int32
}

func (c *countingStream) PublishUplink(ctx context.Context, a uplink.Accepted, payload []byte) error {
	c.calls.Add(1)
	return c.Recorder.PublishUplink(ctx, a, payload)
}

// rawAnswer reads one datagram's bytes, failing after 5 s.
func (p *peer) rawAnswer() []byte {
	p.t.Helper()
	buf := make([]byte, 2048)
	_ = p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := p.conn.Read(buf)
	if err != nil {
		p.t.Fatalf("no answer: %v", err)
	}
	return buf[:n]
}

// A CON retransmitted 22 s after the original from the same address, and
// 240 s after from a new one (a NAT rebinding), within EXCHANGE_LIFETIME
// (RFC 7252 §4.8.2), gets the very same answer; the uplink is handed to
// the stream once and remembered once, and each copy's report names the
// original's entry. With storage the entry follows the answer
// (LogBehind), and its position reaches Dedup once it is stored.
func TestLeanRetransmissionAfter22And240Seconds(t *testing.T) {
	for _, storage := range []bool{false, true} {
		t.Run(fmt.Sprintf("storage=%v", storage), func(t *testing.T) { testRetransmissionAfter22And240(t, storage) })
	}
}

func testRetransmissionAfter22And240(t *testing.T, storage bool) {
	live := &countingStream{Recorder: streamtest.New(t, stream.Config{Storage: storage})}
	if live.Behind() != storage {
		t.Fatalf("Behind() = %v with storage=%v", live.Behind(), storage)
	}
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var now atomic.Int64
	now.Store(t0.UnixNano())
	h := newHandler(t, live)
	h.Now = func() time.Time { return time.Unix(0, now.Load()).UTC() }
	s, _ := startLean(t, h, ingest.LeanConfig{})
	first, rebound := dialPeer(t, s), dialPeer(t, s)
	m := encode(t, uplinkMsg(t, message.Confirmable, 900, []byte{0xca, 0xfe}, &nbiotv1.Uplink{DeviceId: "RETX-1", UplinkCount: 5}))

	first.sendRaw(m)
	original := first.rawAnswer()
	if !live.FlushLive(5 * time.Second) { // its entry stored: position 1
		t.Fatal("the entry was not stored within 5 s")
	}
	for _, tc := range []struct {
		after time.Duration
		p     *peer
	}{{22 * time.Second, first}, {240 * time.Second, rebound}} {
		now.Store(t0.Add(tc.after).UnixNano())
		tc.p.sendRaw(m)
		if got := tc.p.rawAnswer(); string(got) != string(original) {
			t.Errorf("after %v: answer % x, want % x", tc.after, got, original)
		}
	}
	if n := live.calls.Load(); n != 1 {
		t.Errorf("stream got the uplink %d times, want 1", n)
	}
	if n := len(live.All()); n != 1 {
		t.Errorf("%d live-log entries, want 1", n)
	}
	if n := h.Dedup.Len(); n != 1 {
		t.Errorf("Dedup holds %d entries, want 1", n)
	}
	if n := testutil.ToFloat64(h.Metrics.Duplicates); n != 2 {
		t.Errorf("duplicates = %v, want 2", n)
	}
	reports := live.Notices()
	if len(reports) != 2 {
		t.Fatalf("%d retransmission reports, want 2", len(reports))
	}
	for i, r := range reports {
		if rt, _ := r.Data.(map[string]any)["retransmission"].(livelog.RetransmissionData); rt.OfSeq != 1 {
			t.Errorf("report %d names position %d, want 1 (the original's entry)", i, rt.OfSeq)
		}
	}
}

// After a source sends 3,200 junk datagrams (random bytes, many with a
// valid CoAP header: RST, 4.02 or ignored), a valid CON from that same
// source is answered at its first transmission, three times in a row.
func TestLeanJunkBurstThenValidCON(t *testing.T) {
	s, _ := startLean(t, newHandler(t, streamtest.New(t, stream.Config{})), ingest.LeanConfig{})
	if got := s.ReceiveBuffer(); got < ingest.DefaultLeanReadBuffer {
		// The burst must wait in the socket, not be dropped by the kernel
		// (scripts/test.sh raises the limit when it runs as root).
		t.Fatalf("the server's receive buffer is %d B, under the %d B it asks for: raise net.core.rmem_max (sysctl -w net.core.rmem_max=%d)",
			got, ingest.DefaultLeanReadBuffer, ingest.DefaultLeanReadBuffer)
	}
	p := dialPeer(t, s)
	_ = p.conn.SetReadBuffer(4 << 20)
	answers := make(chan message.Message, 16)
	go func() { // drain every answer, so the peer's own buffer never drops ours
		buf := make([]byte, 2048)
		for {
			n, err := p.conn.Read(buf)
			if err != nil {
				return
			}
			m := message.Message{Options: make(message.Options, 0, 8)}
			if _, err := coder.DefaultCoder.Decode(buf[:n], &m); err == nil && m.Code == codes.Changed {
				m.Token = append([]byte(nil), m.Token...)
				answers <- m
			}
		}
	}()
	rng := rand.New(rand.NewPCG(10, 3200))
	for round := range 3 {
		for range 3200 {
			b := make([]byte, 1+rng.IntN(120))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			if rng.IntN(2) == 0 { // a CoAP header: version 1, any type and code
				b[0] = 0x40 | b[0]&0x3f
			}
			p.sendRaw(b)
		}
		mid := int32(1000 + round)
		p.send(uplinkMsg(t, message.Confirmable, mid, []byte{0x51, byte(round)}, &nbiotv1.Uplink{DeviceId: "JUNK-1", UplinkCount: uint32(round)}))
		select {
		case m := <-answers:
			if m.Type != message.Acknowledgement || m.MessageID != mid {
				t.Fatalf("round %d: got %v", round, &m)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the valid CON after the junk burst got no answer", round)
		}
	}
}

// The socket gets the receive buffer asked for (up to net.core.rmem_max):
// it is what lets a burst wait instead of being dropped by the kernel.
func TestLeanReceiveBuffer(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		// scripts/test.sh reads and raises this sysctl: in CI it must exist.
		if os.Getenv("CI") == "true" {
			t.Fatalf("no /proc/sys/net/core/rmem_max: %v", err)
		}
		t.Skip("no /proc/sys/net/core/rmem_max")
	}
	rmemMax, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	s, _ := startLean(t, newHandler(t, streamtest.New(t, stream.Config{})), ingest.LeanConfig{ReadBuffer: 1 << 20})
	want := min(1<<20, rmemMax)
	if got := s.ReceiveBuffer(); got < want {
		t.Errorf("receive buffer %d B, want %d (rmem_max %d)", got, want, rmemMax)
	}
}
