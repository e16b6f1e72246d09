package ingest_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/stream/streamtest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// deviceSet is an ingest.DeviceSet the test fills (devset.Set over a real
// database is exercised by the app's tests).
type deviceSet struct {
	mu     sync.Mutex
	ids    map[string]bool
	loaded bool
}

func (s *deviceSet) Has(id string) (bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[id], s.loaded
}

// With AUTO_REGISTER off (Handler.Registered set), an uplink naming an ID
// that is not registered gets 4.03 and puts nothing on either stream, not
// even a rejection entry when its fields are invalid; a registered one is
// accepted; while the list is not loaded yet the answer is 5.03.
func TestUnregisteredDeviceRefused(t *testing.T) {
	live := streamtest.New(t, stream.Config{Storage: true})
	m := ingest.NewMetrics(prometheus.NewRegistry())
	reg := &deviceSet{ids: map[string]bool{"KNOWN": true}}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := &ingest.Handler{Stream: live, Registered: reg, Logger: logger, Metrics: m}
	postUplink := servePost(t, h)
	post := func(u *nbiotv1.Uplink) codes.Code { t.Helper(); return postUplink(u).Code() }

	if c := post(&nbiotv1.Uplink{DeviceId: "KNOWN", UplinkCount: 1}); c != codes.ServiceUnavailable {
		t.Fatalf("before the list is loaded: %v, want 5.03", c)
	}
	reg.mu.Lock()
	reg.loaded = true
	reg.mu.Unlock()
	if c := post(&nbiotv1.Uplink{DeviceId: "STRANGER", UplinkCount: 1}); c != codes.Forbidden {
		t.Fatalf("unregistered: %v, want 4.03", c)
	}
	// An invalid field from an unregistered ID: refused, and no error
	// entry on a live log nobody owns.
	if c := post(&nbiotv1.Uplink{DeviceId: "STRANGER", UplinkCount: 2, Config: &nbiotv1.DeviceConfig{HwVersion: string(make([]byte, 100))}}); c != codes.BadRequest {
		t.Fatalf("invalid from unregistered: %v, want 4.00", c)
	}
	if c := post(&nbiotv1.Uplink{DeviceId: "KNOWN", UplinkCount: 2}); c != codes.Changed {
		t.Fatalf("registered: %v, want 2.04", c)
	}
	for _, e := range live.All() {
		if e.DeviceID == "STRANGER" {
			t.Errorf("live log has an entry for the unregistered device: %+v", e)
		}
	}
	if n := len(live.All()); n != 1 {
		t.Errorf("live log has %d entries, want 1 (KNOWN's uplink)", n)
	}
	if held, err := live.UplinksHeld(context.Background()); err != nil || held != 1 {
		t.Errorf("UPLINKS holds %d (%v), want 1", held, err)
	}
	if got := testutil.ToFloat64(m.Rejected("unregistered")); got != 1 {
		t.Errorf("rejected{unregistered} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Rejected("registered_unknown")); got != 1 {
		t.Errorf("rejected{registered_unknown} = %v, want 1", got)
	}
}
