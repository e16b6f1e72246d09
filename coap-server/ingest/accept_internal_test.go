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
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"github.com/prometheus/client_golang/prometheus/testutil"

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
func (r *recStream) Notify(*livelog.Entry) {}

func answerCode(t *testing.T, answers [][]byte) codes.Code {
	t.Helper()
	if len(answers) != 1 {
		t.Fatalf("%d answers, want 1", len(answers))
	}
	m := message.Message{Options: make(message.Options, 0, 8)}
	if _, err := coder.DefaultCoder.Decode(answers[0], &m); err != nil {
		t.Fatal(err)
	}
	return m.Code
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
