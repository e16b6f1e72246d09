package app_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// One user asking for random device IDs cannot occupy the access checks
// another user needs. The backend (Supabase REST) answers in 300 ms and
// the relay runs 8 checks at once: 200 requests in flight from one user
// would queue another user's check for over 7 s, past the 5 s check
// timeout (503). With the per-user budget of uncached checks, the flood
// gets 429 and the other user's checks are served. The latencies are
// logged, not asserted.
func TestRandomDeviceFloodDoesNotStarveOthers(t *testing.T) {
	const users = 5
	f := newFloodEnv(t, 300*time.Millisecond, users, nil, nil)
	stop := f.flood(t, 200)
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	testwait.For(t, "the flood reaching the backend", func() bool { return f.backend.Load() >= 8 })
	for i := 0; i < users; i++ {
		start := time.Now()
		code, err := f.dial(f.token(t, floodUser(i)), fmt.Sprintf("192.0.2.%d", i+1), floodDev(i))
		if err != nil || code != http.StatusSwitchingProtocols {
			t.Fatalf("user %d's check during the flood: HTTP %d, %v (backend requests so far %d, in flight %d)", i, code, err, f.backend.Load(), f.inFlight.Load())
		}
		t.Logf("user %d: served in %v during the flood (backend in flight %d)", i, time.Since(start).Round(time.Millisecond), f.inFlight.Load())
	}
	sent, limited := stop()
	stopped = true
	t.Logf("flood: %d requests answered, %d with 429; backend asked %d times", sent, limited, f.backend.Load())
	if limited == 0 {
		t.Errorf("no flood request got 429")
	}
	if got := counter(t, f.relay.Metrics, "nbiot_relay_rejected_total", "reason", "check_rate") + counter(t, f.relay.Metrics, "nbiot_relay_rejected_total", "reason", "user_limit"); got == 0 {
		t.Errorf("rejected{check_rate|user_limit} not counted")
	}
}
