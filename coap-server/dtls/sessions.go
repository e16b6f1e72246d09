package dtls

import (
	"errors"
	"sync"
	"time"
)

// registry holds the established session of each identity: one per device.
// A new handshake by the same identity replaces (and closes) the older one,
// so one device ID cannot pile up sessions; a revoked key closes it.
type registry struct {
	mu     sync.Mutex
	byID   map[string]*session
	closed bool // the server stopped: no session is added any more
}

func newRegistry() *registry { return &registry{byID: make(map[string]*session)} }

// add makes s the session of its identity and returns the one to close:
// the one it replaces or, when the registered session was accepted after
// s, s itself. Each handshake ends on its own goroutine, so two of one
// identity can finish in either order; the later ClientHello wins. After
// close it adds nothing and returns s, with closed true.
func (r *registry) add(s *session) (older *session, closed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return s, true
	}
	older = r.byID[s.identity]
	if older != nil && older.order > s.order {
		return s, false
	}
	r.byID[s.identity] = s
	return older, false
}

// close ends the registry at Stop and returns every session in it, for
// the server to close: go-coap's DTLS server keeps its sessions in a map
// keyed by remote address, so a device that rebooted on the same address
// can have its old session's end delete the new one's entry; Serve then
// waits forever for a session it no longer closes
// (docs/pitfalls.md#go-coap).
func (r *registry) close() []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	out := make([]*session, 0, len(r.byID))
	for _, s := range r.byID {
		out = append(out, s)
	}
	return out
}

// remove forgets s if it is still its identity's session.
func (r *registry) remove(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID[s.identity] == s {
		delete(r.byID, s.identity)
	}
}

// take removes and returns the session of id, if any.
func (r *registry) take(id string) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.byID[id]
	delete(r.byID, id)
	return s
}

// idlest returns the registered session silent the longest, other than
// except, if it has been for at least idle at now; nil otherwise. It scans
// every session: it runs when a session is established at the cap, and
// for room at most once a second.
func (r *registry) idlest(now time.Time, idle time.Duration, except *session) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.idlestLocked(now, idle, except)
}

func (r *registry) idlestLocked(now time.Time, idle time.Duration, except *session) *session {
	var best *session
	for _, s := range r.byID {
		if s != except && (best == nil || s.active.Load() < best.active.Load()) {
			best = s
		}
	}
	if best == nil || now.UnixNano()-best.active.Load() < int64(idle) {
		return nil
	}
	return best
}

// takeIdlest is idlest, the session removed from the registry as it is
// returned: two handshakes established at the cap at once each get a
// session of their own to push out (with idlest both closed the same one,
// and the sessions stayed one over the cap).
func (r *registry) takeIdlest(now time.Time, idle time.Duration, except *session) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.idlestLocked(now, idle, except)
	if s != nil {
		delete(r.byID, s.identity)
	}
	return s
}

func (r *registry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byID)
}

// ErrReplaced ends a handshake that finished after a newer one of the same
// identity: the newer session is already serving the device.
var ErrReplaced = errors.New("dtls: a newer session of this identity exists")
