package dtls

import "sync"

// registry holds the established session of each identity: one per device.
// A new handshake by the same identity replaces (and closes) the older one,
// so one device ID cannot pile up sessions; a revoked key closes it.
type registry struct {
	mu   sync.Mutex
	byID map[string]*session
}

func newRegistry() *registry { return &registry{byID: make(map[string]*session)} }

// add makes s the session of its identity and returns the one it replaces.
func (r *registry) add(s *session) (old *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old = r.byID[s.identity]
	r.byID[s.identity] = s
	return old
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

func (r *registry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byID)
}
