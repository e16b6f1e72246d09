package stream

import (
	"fmt"
	"path/filepath"
)

// One embedded server per DATA_DIR. nats-server takes no lock on its
// store, and a second coap-server started on the same DATA_DIR (by hand
// or a supervisor, beside an old process still draining) started as
// well and wrote the same message blocks from a server of its own: each
// overwrote what the other stored, and uplinks both acknowledged were
// lost (tried: 500 answered 2.04 by each; started again, the live log
// held the 500 of one and none of the other's). So the
// embedded engine holds an exclusive lock on DATA_DIR/lockName while it
// runs (flock: the kernel drops it when the process ends, kill -9
// included, so it never goes stale), and a second one refuses to start
// with one line naming DATA_DIR and the holder's pid.
const lockName = "coap-server.lock"

// errInUse is the line for a DATA_DIR whose lock another process holds.
func errInUse(dir, holder string) error {
	if holder != "" {
		holder = " (pid " + holder + ")"
	}
	return fmt.Errorf("DATA_DIR %s is in use by another coap-server%s: give each instance its own DATA_DIR, "+
		"or run them all on one NATS with NATS_URL", filepath.Clean(dir), holder)
}
