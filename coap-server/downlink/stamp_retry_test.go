package downlink_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// stampStore is the Store of tests that Put rows themselves: it records
// the stamps asked for (failed attempts included) and fails the first
// failSent MarkSent and failApplied MarkApplied calls. hold, if set, is
// called by MarkSent before it answers.
type stampStore struct {
	downlink.Store // nil: Pending is never called

	mu                    sync.Mutex
	sent, applied         []int64
	failSent, failApplied int
	hold                  func(id int64)
}

var errDown = errors.New("database down")

func (s *stampStore) MarkSent(_ context.Context, id int64, _ string, _ time.Time) error {
	if s.hold != nil {
		s.hold(id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, id)
	if s.failSent > 0 {
		s.failSent--
		return errDown
	}
	return nil
}

func (s *stampStore) MarkApplied(_ context.Context, id int64, _ time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied = append(s.applied, id)
	if s.failApplied > 0 {
		s.failApplied--
		return errDown
	}
	return nil
}

func (s *stampStore) calls() (sent, applied []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.sent...), append([]int64(nil), s.applied...)
}

// newStampService is a service over store whose retries do not wait.
func newStampService(t *testing.T, store downlink.Store, stamps downlink.StamperConfig) (*downlink.Service, *downlink.Metrics) {
	t.Helper()
	m := downlink.NewMetrics(prometheus.NewRegistry())
	stamps.Sleep = func(context.Context, time.Duration) {}
	return downlink.New(store, downlink.Config{Metrics: m, Logger: discard, Stamps: stamps}), m
}

// closeService writes the queued stamps: after it, the store has seen
// every stamp the service queued.
func closeService(t *testing.T, s *downlink.Service) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func uplinkOf(device string, version int64) uplink.Accepted {
	u := &nbiotv1.Uplink{DeviceId: device, UplinkCount: 1}
	if version > 0 {
		v := uint32(version)
		u.Config = &nbiotv1.DeviceConfig{ConfigVersion: &v}
	}
	return uplink.Accepted{DeviceID: device, ReceivedAt: time.Now(), Uplink: u}
}

// A stamp that failed all its attempts is written again by the next
// uplink that would have stamped it: sent_at by the next send of that
// downlink, applied_at by the next report of its version.
func TestGivenUpStampIsQueuedAgain(t *testing.T) {
	store := &stampStore{failSent: 2, failApplied: 2}
	s, m := newStampService(t, store, downlink.StamperConfig{Attempts: 2})
	failed := func(n float64) {
		t.Helper()
		testwait.For(t, "the stamp given up", func() bool { return testutil.ToFloat64(m.Dropped.WithLabelValues("stamp_failed")) == n })
	}
	s.Put(downlink.Row{ID: 7, DeviceID: "stamp-dev", Config: []byte(`{"heartbeat_interval": 600}`)})

	if p, _, _ := s.ForUplink(uplinkOf("stamp-dev", 0)); len(p) == 0 {
		t.Fatal("the pending downlink was not sent")
	}
	failed(1)
	s.ForUplink(uplinkOf("stamp-dev", 0)) // the resend: sent_at again
	s.ForUplink(uplinkOf("stamp-dev", 7)) // applied
	failed(2)
	s.ForUplink(uplinkOf("stamp-dev", 7)) // reports it again: applied_at again
	closeService(t, s)

	sent, applied := store.calls()
	if len(sent) != 3 || len(applied) != 3 {
		t.Fatalf("MarkSent calls %v, MarkApplied calls %v; want 3 each (2 failed attempts, then the stamp queued again by the next uplink)", sent, applied)
	}
}

// A stamp dropped because the queue was full is queued again by the next
// send of that downlink.
func TestDroppedStampIsQueuedAgain(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	store := &stampStore{}
	store.hold = func(id int64) {
		if id == 1 { // the first stamp: the writer is busy until released
			entered <- struct{}{}
			<-release
		}
	}
	s, m := newStampService(t, store, downlink.StamperConfig{QueueSize: 1})
	for i, dev := range []string{"busy", "queued", "dropped"} {
		s.Put(downlink.Row{ID: int64(i + 1), DeviceID: dev, Config: []byte(`{"gnss_interval": 60}`)})
	}
	s.ForUplink(uplinkOf("busy", 0))
	<-entered                          // the writer holds busy's stamp
	s.ForUplink(uplinkOf("queued", 0)) // fills the queue
	s.ForUplink(uplinkOf("dropped", 0))
	if got := testutil.ToFloat64(m.Dropped.WithLabelValues("stamp_queue_full")); got != 1 {
		t.Fatalf("stamp_queue_full = %v, want 1", got)
	}
	close(release)
	testwait.For(t, "the queue drained", func() bool { return s.Stamps() == 0 })
	s.ForUplink(uplinkOf("dropped", 0)) // the resend
	closeService(t, s)

	sent, _ := store.calls()
	if len(sent) != 3 || sent[2] != 3 {
		t.Fatalf("MarkSent calls %v, want [1 2 3]: the dropped stamp of row 3 queued again by its resend", sent)
	}
}

// Close with a ctx that ended already (the storage drain before it used
// the shutdown's time up) and nothing queued cuts nothing: no error.
// Before, Close chose at random between its finished writer and the ended
// ctx, and a stop during a database outage exited 1 with "downlink
// stamps: context deadline exceeded".
func TestCloseWithAnEndedContextAndNothingQueued(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 50 {
		st := downlink.NewStamper(&stampStore{}, downlink.StamperConfig{}, downlink.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler), func(int64, string, bool) {})
		if err := st.Close(ctx); err != nil {
			t.Fatalf("close %d with nothing queued: %v", i, err)
		}
	}
}

// A stamp still queued when Close's ctx ends is given up, and Close says so.
func TestCloseWithAnEndedContextReportsACutStamp(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	store := &stampStore{failSent: 1 << 30} // the database is down
	st := downlink.NewStamper(store, downlink.StamperConfig{}, downlink.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler), func(int64, string, bool) {})
	st.Sent(1, "DEV", time.Now())
	if err := st.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("close with a failing stamp queued: %v, want context.Canceled", err)
	}
}
