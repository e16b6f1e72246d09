package ingest

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// memStream takes every uplink at once, in memory: the fuzz and count
// tests exercise the datagram path, not the stream.
type memStream struct {
	seq atomic.Uint64
}

func (m *memStream) PublishUplink(context.Context, uplink.Accepted, []byte) error { return nil }
func (m *memStream) Stores() bool                                                 { return false }

func (m *memStream) Log(context.Context, *livelog.Entry, string) (uint64, bool, error) {
	return m.seq.Add(1), false, nil
}
func (m *memStream) LogAsync(*livelog.Entry)           {}
func (m *memStream) LogAsyncID(*livelog.Entry, string) {}
func (m *memStream) Behind() bool                      { return false }
func (m *memStream) LogBehind(*livelog.Entry, string, func(uint64)) error {
	panic("memStream: not Behind")
}
func (m *memStream) Notify(*livelog.Entry) {}

// syncLean is a LeanServer driven by hand, without a socket or workers:
// exchange runs one datagram to its answers.
type syncLean struct {
	s       *LeanServer
	ex      *exchange
	answers [][]byte
}

func newSyncLean(t testing.TB, h *Handler) *syncLean {
	t.Helper()
	s, err := NewLeanServer(h, nil, LeanConfig{Metrics: NewLeanMetrics(prometheus.NewRegistry()), QueueLen: 4, Logger: h.Logger})
	if err != nil {
		t.Fatal(err)
	}
	sl := &syncLean{s: s, ex: newExchange(s)}
	s.send = func(b []byte, _ netip.AddrPort) { sl.answers = append(sl.answers, append([]byte(nil), b...)) }
	return sl
}

// exchange passes b through the read loop's classification and, when
// queued, a worker; it returns what was sent.
func (sl *syncLean) exchange(b []byte, from netip.AddrPort) [][]byte {
	sl.answers = sl.answers[:0]
	sl.s.receive(b, from)
	var d *datagram
	select {
	case d = <-sl.s.queue:
	case d = <-sl.s.overflow:
	default:
		return sl.answers
	}
	sl.s.dequeued(d)
	sl.ex.serve(d)
	sl.s.leave(d)
	sl.s.release(d)
	return sl.answers
}

func testHandler(now func() time.Time) *Handler {
	return &Handler{Stream: &memStream{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics: NewMetrics(prometheus.NewRegistry()), Dedup: NewDedup(64<<20, 0), Now: now}
}

func conUplink(t testing.TB, mid uint16, u *nbiotv1.Uplink) []byte {
	t.Helper()
	payload, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	m := message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: int32(mid), Token: []byte{byte(mid), 0xa5},
		Payload: payload, Options: message.Options{{ID: message.URIPath, Value: []byte("uplink")}}}
	b := make([]byte, 512)
	n, err := coder.DefaultCoder.Encode(m, b)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

// A peer with 60,000 remembered answers costs each datagram what a peer
// with 10 does: the entries Dedup touches per datagram are counted, and
// bounded, also when all 60,000 expire at once. (go-coap v3.8.0's UDP
// server walks the peer's whole cache per datagram; its cost is shown by
// BenchmarkPeerHistory, the cache being out of a test's reach.)
func TestPeerHistoryCostsNothingPerDatagram(t *testing.T) {
	for _, history := range []int{10, 60_000} {
		t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
		var now atomic.Int64
		now.Store(t0.UnixNano())
		h := testHandler(func() time.Time { return time.Unix(0, now.Load()) })
		sl := newSyncLean(t, h)
		from := netip.MustParseAddrPort("192.0.2.7:40000")
		// The peer's history: answers to its earlier uplinks, as the
		// datagram path remembers them.
		for i := range history {
			k := h.Dedup.key("HIST-1", int32(i), []byte{byte(i), 0xa5}, []byte{byte(i), byte(i >> 8)})
			h.Dedup.remember(k, codes.Changed, nil, uint64(i), t0)
		}
		if h.Dedup.Len() != history {
			t.Fatalf("history %d: Dedup holds %d", history, h.Dedup.Len())
		}
		maxSteps := func(at time.Time, first uint16) int64 {
			now.Store(at.UnixNano())
			var worst int64
			for i := range uint16(50) {
				before := h.Dedup.steps
				answers := sl.exchange(conUplink(t, first+i, &nbiotv1.Uplink{DeviceId: "HIST-1", UplinkCount: uint32(first + i)}), from)
				if len(answers) != 1 {
					t.Fatalf("history %d: %d answers", history, len(answers))
				}
				worst = max(worst, h.Dedup.steps-before)
			}
			return worst
		}
		// One lookup, one remember: 2 entries touched, however long the history.
		if got := maxSteps(t0.Add(22*time.Second), 61_000); got != 2 {
			t.Errorf("history %d: up to %d Dedup steps per datagram, want 2", history, got)
		}
		// Everything expired: each datagram sweeps at most dedupSweep of it.
		if got := maxSteps(t0.Add(ExchangeLifetime+time.Second), 62_000); got > 2+dedupSweep {
			t.Errorf("history %d, all expired: up to %d steps per datagram, want ≤ %d", history, got, 2+dedupSweep)
		}
		if n := sl.s.inflight.len(); n != 0 {
			t.Errorf("history %d: %d exchanges left in flight", history, n)
		}
	}
}

// FuzzLeanDatagram feeds arbitrary datagrams through the lean path (header
// classification, decoding, the uplink logic, encoding) with an in-memory
// stream: it must not panic, and answers at most once, with a message
// go-coap decodes, matching the request as RFC 7252 §4 and §5 ask, at
// most 3 times the request's size.
func FuzzLeanDatagram(f *testing.F) {
	valid := conUplink(f, 7, &nbiotv1.Uplink{DeviceId: "FUZZ-1", UplinkCount: 1})
	f.Add(valid)
	f.Add([]byte{0x40, 0x00, 0x12, 0x34})       // ping
	f.Add([]byte{0x50, 0x02, 0x12, 0x35, 0xff}) // malformed NON
	f.Add([]byte{0x60, 0x44, 0x12, 0x36})       // ACK 2.04
	f.Add([]byte{0x70, 0x00, 0x12, 0x37})       // RST
	f.Add([]byte{0x48, 0x01, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0xb6, 'u', 'p', 'l', 'i', 'n', 'k'})
	non := append([]byte(nil), valid...)
	non[0] = non[0]&^0x30 | 0x10
	f.Add(non)
	h := testHandler(nil)
	sl := newSyncLean(f, h)
	from := netip.MustParseAddrPort("192.0.2.9:5000")
	f.Fuzz(func(t *testing.T, b []byte) {
		answers := sl.exchange(b, from)
		if len(answers) > 1 {
			t.Fatalf("%d answers to one datagram", len(answers))
		}
		con := len(b) >= 4 && b[0]>>6 == 1 && message.Type(b[0]>>4&3) == message.Confirmable
		if len(answers) == 0 {
			if con {
				t.Fatal("a CON got no answer (§4.2: ACK or RST)")
			}
			return
		}
		if len(b) < 4 || b[0]>>6 != 1 {
			t.Fatal("answered a datagram without a CoAP header")
		}
		in := message.Type(b[0] >> 4 & 3)
		mid := int32(b[2])<<8 | int32(b[3])
		out := message.Message{Options: make(message.Options, 0, 8)}
		if _, err := coder.DefaultCoder.Decode(answers[0], &out); err != nil {
			t.Fatalf("answer undecodable: %v", err)
		}
		switch in {
		case message.Confirmable:
			if (out.Type != message.Acknowledgement && out.Type != message.Reset) || out.MessageID != mid {
				t.Fatalf("CON %d answered with %v", mid, &out)
			}
		case message.NonConfirmable:
			if out.Type != message.NonConfirmable {
				t.Fatalf("NON answered with %v", &out)
			}
		default:
			t.Fatalf("answered an ACK or RST with %v", &out)
		}
		if len(answers[0]) > amplification*len(b) {
			// No Downlinks here: every answer is the code and at most
			// an option (§11.3).
			t.Fatalf("answer of %d bytes to %d: more than %d times", len(answers[0]), len(b), amplification)
		}
		if out.Type == message.Reset && (out.Code != codes.Empty || len(out.Token) != 0) {
			t.Fatalf("RST not empty: %v", &out)
		}
		if n := sl.s.inflight.len(); n != 0 {
			t.Fatalf("%d exchanges left in flight", n)
		}
	})
}

// blockingStream holds the first Log until released, so a test can send a
// copy while the first is being processed.
type blockingStream struct {
	memStream
	entered chan struct{}
	release chan struct{}
	logs    atomic.Int64
}

func (b *blockingStream) Log(ctx context.Context, e *livelog.Entry, id string) (uint64, bool, error) {
	if b.logs.Add(1) == 1 {
		b.entered <- struct{}{}
		<-b.release
	}
	return b.memStream.Log(ctx, e, id)
}

// TestCopiesAtOnceFromTwoAddressesMakeOneEntry: two copies of one CON
// arriving from two addresses (a NAT rebinding) while the first is being
// processed: the second gets no answer of its own and is not processed;
// the first is answered 2.04; a later copy gets the remembered answer.
// One live-log entry in all (with the embedded server nothing else
// recognises the copy: its message IDs are gone).
func TestCopiesAtOnceFromTwoAddressesMakeOneEntry(t *testing.T) {
	st := &blockingStream{entered: make(chan struct{}, 1), release: make(chan struct{})}
	h := testHandler(time.Now)
	h.Stream, h.Dedup = st, NewStrictDedup(1<<20, 0)
	first, second := newSyncLean(t, h), newSyncLean(t, h)
	dgram := conUplink(t, 0x4242, &nbiotv1.Uplink{DeviceId: "NAT", UplinkCount: 1})
	a, b := netip.MustParseAddrPort("127.0.0.1:40001"), netip.MustParseAddrPort("127.0.0.1:40002")
	done := make(chan [][]byte)
	go func() { done <- first.exchange(dgram, a) }()
	<-st.entered
	if got := second.exchange(dgram, b); len(got) != 0 {
		t.Fatalf("the copy from another address while the first is processed got %d answers, want none", len(got))
	}
	close(st.release)
	if got := <-done; len(got) != 1 || ackCode(t, got[0]) != codes.Changed {
		t.Fatalf("first copy: %d answers, want one 2.04", len(got))
	}
	if got := second.exchange(dgram, b); len(got) != 1 || ackCode(t, got[0]) != codes.Changed {
		t.Fatalf("later copy: %d answers, want the remembered 2.04", len(got))
	}
	if n := st.logs.Load(); n != 1 {
		t.Errorf("%d live-log entries, want 1", n)
	}
}

func ackCode(t *testing.T, b []byte) codes.Code {
	t.Helper()
	var m message.Message
	if _, err := coder.DefaultCoder.Decode(b, &m); err != nil {
		t.Fatal(err)
	}
	return m.Code
}
