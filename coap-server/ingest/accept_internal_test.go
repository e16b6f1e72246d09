package ingest

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// recStream is a storage stream in memory that records what it made
// durable and which entries it took; Log fails while failLog is set.
type recStream struct {
	mu      sync.Mutex
	durable []uplink.Accepted
	entries []*livelog.Entry
	async   int
	failLog bool
	seq     uint64
}

func (r *recStream) Stores() bool { return true }
func (r *recStream) Behind() bool { return false }
func (r *recStream) LogBehind(*livelog.Entry, string, func(uint64)) error {
	panic("recStream: not Behind")
}
func (r *recStream) PublishUplink(_ context.Context, a uplink.Accepted, _ []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.durable = append(r.durable, a)
	return nil
}
func (r *recStream) Log(_ context.Context, e *livelog.Entry, _ string) (uint64, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failLog {
		return 0, false, errors.New("stream: unavailable: no acknowledgement within 2s")
	}
	r.seq++
	r.entries = append(r.entries, e)
	return r.seq, false, nil
}
func (r *recStream) LogAsync(e *livelog.Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.async++
	r.entries = append(r.entries, e)
}
func (r *recStream) LogAsyncID(e *livelog.Entry, _ string) { r.LogAsync(e) }
func (r *recStream) Notify(*livelog.Entry)                 {}

func answerCode(t *testing.T, answers [][]byte) codes.Code {
	t.Helper()
	return decodeAnswer(t, answers).Code
}

// An uplink the storage stream made durable is accepted even when its
// live-log entry is not: 2.04 (its entry sent again without waiting,
// counted), and a retransmission gets the same answer with nothing made
// durable twice. It was answered 5.03, which ends the exchange: the
// device's next try, a new request, was stored a second time.
func TestDurableUplinkIsAcceptedWhenItsEntryFails(t *testing.T) {
	rs := &recStream{failLog: true}
	h := testHandler(time.Now)
	h.Stream = rs
	sl := newSyncLean(t, h)
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	b := conUplink(t, 100, &nbiotv1.Uplink{DeviceId: "ENTRY-FAIL", UplinkCount: 7})
	if c := answerCode(t, sl.exchange(b, from)); c != codes.Changed {
		t.Fatalf("answer %v, want 2.04: the uplink is durable", c)
	}
	if c := answerCode(t, sl.exchange(b, from)); c != codes.Changed {
		t.Fatalf("retransmission: %v, want 2.04", c)
	}
	if n := len(rs.durable); n != 1 {
		t.Errorf("made durable %d times, want 1", n)
	}
	if rs.async != 1 || len(rs.entries) != 1 {
		t.Errorf("entry sent again %d times (%d taken), want once", rs.async, len(rs.entries))
	}
	if got := testutil.ToFloat64(h.Metrics.EntriesFailed); got != 1 {
		t.Errorf("nbiot_livelog_entries_failed_total = %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.Metrics.Accepted); got != 1 {
		t.Errorf("accepted = %v, want 1", got)
	}
}

// A refused CON of a known device logs one error entry; its
// retransmission (the 4.00 was lost) gets the same 4.00 and logs none.
// It logged a second one: refusals were not remembered.
func TestRefusedRetransmissionLogsOnce(t *testing.T) {
	rs := &recStream{}
	h := testHandler(time.Now)
	h.Stream = rs
	h.Refusals = NewDedup(1<<20, 0)
	sl := newSyncLean(t, h)
	from := netip.MustParseAddrPort("192.0.2.2:5000")
	bad := float32(math.Inf(1)) // not finite: ErrInvalid, the device known
	b := conUplink(t, 200, &nbiotv1.Uplink{DeviceId: "REFUSED-1", UplinkCount: 1, Temperature: &bad})
	for i := range 2 {
		if c := answerCode(t, sl.exchange(b, from)); c != codes.BadRequest {
			t.Fatalf("copy %d: %v, want 4.00", i, c)
		}
	}
	if n := len(rs.entries); n != 1 {
		t.Fatalf("%d error entries for one request and its retransmission, want 1", n)
	}
	// Another request (a new message ID) is refused and logged again.
	if c := answerCode(t, sl.exchange(conUplink(t, 201, &nbiotv1.Uplink{DeviceId: "REFUSED-1", UplinkCount: 1, Temperature: &bad}), from)); c != codes.BadRequest {
		t.Fatalf("new request: %v, want 4.00", c)
	}
	if n := len(rs.entries); n != 2 {
		t.Errorf("%d error entries after a second request, want 2", n)
	}
}

// lists is a DeviceSet the test changes while serving.
type lists struct {
	mu     sync.Mutex
	ids    map[string]bool
	loaded bool
}

func (l *lists) Has(id string) (bool, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ids[id], l.loaded
}

func (l *lists) set(id string, has, loaded bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids[id], l.loaded = has, loaded
}

// pending hands every uplink the same downlink.
type pending []byte

func (p pending) ForUplink(uplink.Accepted) ([]byte, *bool, *livelog.Entry) { return p, nil, nil }

// A retransmission of an accepted uplink gets its 2.04 whatever the
// admission lists say by then: credentials added for the device, the
// device deleted (AUTO_REGISTER=false), the lists not known (a restart).
// It got 4.01 / 4.03 / 5.03, which ends the exchange, and the device's
// next try, a new request, was stored a second time. A new request is
// judged by today's lists.
func TestRetransmissionIsAnsweredWhateverTheListsSayNow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(creds, reg *lists, id string)
		want   codes.Code // a new request's answer after the change
	}{
		{"credentials added", func(creds, _ *lists, id string) { creds.set(id, true, true) }, codes.Unauthorized},
		{"device deleted", func(_, reg *lists, id string) { reg.set(id, false, true) }, codes.Forbidden},
		{"lists not loaded", func(_, reg *lists, id string) { reg.set(id, true, false) }, codes.ServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "RETX-" + tc.name[:5]
			rs := &recStream{}
			h := testHandler(time.Now)
			h.Stream = rs
			creds := &lists{ids: map[string]bool{}, loaded: true}
			reg := &lists{ids: map[string]bool{id: true}, loaded: true}
			h.Credentialed, h.Registered = creds, reg
			sl := newSyncLean(t, h)
			from := netip.MustParseAddrPort("192.0.2.3:5000")
			b := conUplink(t, 300, &nbiotv1.Uplink{DeviceId: id, UplinkCount: 1})
			if c := answerCode(t, sl.exchange(b, from)); c != codes.Changed {
				t.Fatalf("first copy: %v, want 2.04", c)
			}
			tc.change(creds, reg, id)
			if c := answerCode(t, sl.exchange(b, from)); c != codes.Changed {
				t.Fatalf("retransmission: %v, want 2.04 (the answer already given)", c)
			}
			if c := answerCode(t, sl.exchange(conUplink(t, 301, &nbiotv1.Uplink{DeviceId: id, UplinkCount: 2}), from)); c != tc.want {
				t.Fatalf("new request: %v, want %v", c, tc.want)
			}
			if n := len(rs.durable); n != 1 {
				t.Errorf("made durable %d times, want 1", n)
			}
		})
	}
}

// A copy of an uplink accepted before a restart (restored into Dedup) is
// answered 2.04; the pending configuration it gets in place of the
// forgotten answer goes only to a sender today's lists admit, not to a
// plain-CoAP copy of a device that has credentials now.
func TestRestoredCopyGetsNoDownlinkWhenNotAdmitted(t *testing.T) {
	h := testHandler(time.Now)
	h.Stream = &recStream{}
	h.Downlinks = pending("config")
	creds := &lists{ids: map[string]bool{}, loaded: true}
	h.Credentialed = creds
	sl := newSyncLean(t, h)
	from := netip.MustParseAddrPort("192.0.2.4:5000")
	u := &nbiotv1.Uplink{DeviceId: "RESTORED-1", UplinkCount: 1}
	b := conUplink(t, 400, u)
	payload, _ := proto.Marshal(u)
	now := time.Now()
	if !h.Dedup.Restore(stream.MsgKey("RESTORED-1", 400, []byte{byte(400 % 256), 0xa5}, payload), 9, now.Add(-time.Minute), now) {
		t.Fatal("not restored")
	}
	answer := func() message.Message { t.Helper(); return decodeAnswer(t, sl.exchange(b, from)) }
	creds.set("RESTORED-1", true, true)
	if m := answer(); m.Code != codes.Changed || len(m.Payload) != 0 {
		t.Fatalf("plain copy of a device with credentials: %v with %q, want 2.04 with nothing", m.Code, m.Payload)
	}
	creds.set("RESTORED-1", false, true)
	if m := answer(); m.Code != codes.Changed || string(m.Payload) != "config" {
		t.Fatalf("admitted copy: %v with %q, want 2.04 with the pending configuration", m.Code, m.Payload)
	}
}
