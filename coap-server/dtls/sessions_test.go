package dtls

import "testing"

// Two handshakes of one identity can finish in either order (each on its
// own goroutine, and the server's last flight leaves before its handshake
// returns): the session accepted later stays, whichever finished first.
func TestRegistryKeepsTheLaterAcceptedSession(t *testing.T) {
	for _, tc := range []struct {
		name        string
		finishFirst int // accept order of the session that finishes first
	}{{"in order", 1}, {"out of order", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRegistry()
			older := &session{identity: "dev", order: 1}
			newer := &session{identity: "dev", order: 2}
			first, second := older, newer
			if tc.finishFirst == 2 {
				first, second = newer, older
			}
			if got, _ := r.add(first); got != nil {
				t.Fatalf("first add closes %v", got.order)
			}
			if got, _ := r.add(second); got != older {
				t.Fatalf("second add closes session %v, want the older (1)", got.order)
			}
			if got := r.byID["dev"]; got != newer {
				t.Fatalf("registered session %v, want the newer (2)", got.order)
			}
		})
	}
}
