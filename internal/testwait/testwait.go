// Package testwait is the one way tests wait for a state they can only
// observe from outside (a metric, a row, a connection count): poll a
// condition until it holds, and fail naming what was awaited when it does
// not in time. It polls; it never sleeps in place of synchronisation.
package testwait

import (
	"testing"
	"time"
)

// Default is how long For and ForState wait unless told otherwise.
const Default = 15 * time.Second

// maxTick caps the pause between polls: a condition that holds at once is
// seen within a millisecond, one that queries a database is asked at most
// every 20 ms.
const maxTick = 20 * time.Millisecond

// Option changes how long to wait.
type Option func(*time.Duration)

// Within waits d instead of Default.
func Within(d time.Duration) Option {
	return func(w *time.Duration) { *w = d }
}

// For polls cond until it holds, and fails t with "timed out waiting for
// what" when it does not within Default (or Within).
func For(t testing.TB, what string, cond func() bool, opts ...Option) {
	t.Helper()
	ForState(t, what, func() (bool, string) { return cond(), "" }, opts...)
}

// ForState is For with a condition that also says what it saw; the last
// such state is shown in the failure.
func ForState(t testing.TB, what string, cond func() (ok bool, state string), opts ...Option) {
	t.Helper()
	within := Default
	for _, o := range opts {
		o(&within)
	}
	deadline := time.Now().Add(within)
	tick := time.Millisecond
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if state != "" {
				t.Fatalf("timed out waiting for %s within %v (%s)", what, within, state)
			}
			t.Fatalf("timed out waiting for %s within %v", what, within)
		}
		time.Sleep(tick)
		tick = min(2*tick, maxTick)
	}
}
