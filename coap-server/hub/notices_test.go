package hub

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// notice is a retransmission report about position of, padded to size
// bytes (when it is smaller).
func notice(of uint64, size int) []byte {
	b := fmt.Appendf(nil, `{"deviceId":"D","type":"status","message":"","data":{"retransmission":{"of_seq":%d}}}`, of)
	if pad := size - len(b); pad > 0 {
		b = fmt.Appendf(nil, `{"deviceId":"D","type":"status","message":%q,"data":{"retransmission":{"of_seq":%d}}}`, strings.Repeat("x", pad), of)
	}
	return b
}

// TestOversizeNoticeIsDropped: a notice larger than any live-log entry
// (core NATS carries up to 1 MiB) is dropped and counted, whether it would
// go out at once or be held. Both were taken: the held one pinned its
// megabyte until 256 newer notices pushed it out.
func TestOversizeNoticeIsDropped(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	h := New(m)
	r := &recording{}
	h.Subscribe(r, []string{"D"})
	h.FeedFrom(5)
	h.Feed(0, "D", notice(3, maxNoticeBytes+1))  // about a position out already
	h.Feed(0, "D", notice(99, maxNoticeBytes+1)) // about one far ahead
	if len(h.order.held) != 0 {
		t.Errorf("%d oversize notices held", len(h.order.held))
	}
	h.Feed(99, "D", []byte(`{"deviceId":"D","type":"uplink"}`))
	if len(r.seqs) != 1 || r.seqs[0] != 99 {
		t.Errorf("delivered %v, want [99] alone", r.seqs)
	}
	if got := testutil.ToFloat64(m.NoticesLost.WithLabelValues(LostOversize)); got != 2 {
		t.Errorf("oversize notices counted: %v, want 2", got)
	}
	// One of the largest size still passes.
	before := len(r.seqs)
	h.Feed(0, "D", notice(3, maxNoticeBytes))
	if len(r.seqs) != before+1 {
		t.Errorf("a notice within the limit was not delivered: %v", r.seqs)
	}
}

// TestHeldNoticesAreBoundedInBytes: notices of the largest size about
// positions far ahead are held within maxHeldNoticeBytes, the oldest
// dropped and counted, and the ones kept go out with their entry. By
// count alone 256 were held whatever their size.
func TestHeldNoticesAreBoundedInBytes(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	h := New(m)
	r := &recording{}
	h.Subscribe(r, []string{"D"})
	const sent = maxHeldNotices
	for range sent {
		h.Feed(0, "D", notice(1000, maxNoticeBytes))
	}
	held := 0
	for _, n := range h.order.held {
		held += len(n.entry) + len(n.device)
	}
	if held > maxHeldNoticeBytes || held != h.order.bytes {
		t.Fatalf("%d bytes held (accounted %d), want at most %d", held, h.order.bytes, maxHeldNoticeBytes)
	}
	kept := len(h.order.held)
	if got := testutil.ToFloat64(m.NoticesLost.WithLabelValues(LostHeldFull)); int(got) != sent-kept {
		t.Errorf("held_full counted %v, want %d (%d sent, %d held)", got, sent-kept, sent, kept)
	}
	h.Feed(1000, "D", []byte(`{"deviceId":"D","type":"uplink"}`))
	if len(r.seqs) != 1+kept || h.order.bytes != 0 {
		t.Errorf("%d frames delivered, %d bytes still held; want the entry and the %d held, 0", len(r.seqs), h.order.bytes, kept)
	}
}

// FuzzOfSeq: ofSeq reads notices any NATS client may publish; it never
// panics, reads 0 from what is not JSON, and reads back the position of
// every report as instances write it (livelog.Retransmission).
func FuzzOfSeq(f *testing.F) {
	for _, s := range []string{
		string(notice(7, 0)),
		`{"deviceId":"D","type":"status","data":{"retransmission":{"of_seq":18446744073709551615,"count":2}}}`,
		`{"data":{"retransmission":{"of_seq":18446744073709551616}}}`,
		`{"data":{"retransmission":{"of_seq":-1}}}`,
		`{"data":{"retransmission":{"of_seq":1.5}}}`,
		`{"data":{"retransmission":{"of_seq":"7"}}}`,
		`{"data":{"retransmission":null}}`,
		`{"data":[]}`,
		`{"data":{"retransmission":{"of_seq":3},"retransmission":{"of_seq":4}}}`,
		`null`, `[]`, `{`, ``, "\xff",
	} {
		f.Add([]byte(s), uint64(len(s)))
	}
	f.Fuzz(func(t *testing.T, b []byte, of uint64) {
		if got := ofSeq(b); got != 0 && !json.Valid(b) {
			t.Fatalf("ofSeq(%q) = %d from invalid JSON", b, got)
		}
		// A report as an instance writes it reads back its position.
		e, err := livelog.Retransmission("D", time.Unix(int64(of>>1), 0), uint32(len(b)), of, len(b)).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if got := ofSeq(e); got != of {
			t.Fatalf("ofSeq(%s) = %d, want %d", e, got, of)
		}
	})
}
