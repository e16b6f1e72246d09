package wspeer

import "sync"

// Registry bounds a server's connections and closes them all at shutdown,
// for coap-server's /ws and the relay's /device-logs. A handler Reserves
// a place before the upgrade (a full or closing server answers without
// upgrading), Tracks its peer once upgraded, Untracks it when Run returns
// and Releases the place when it is done. The zero value is ready to use.
type Registry struct {
	mu       sync.Mutex
	peers    map[*Peer]struct{}
	reserved int // handlers between Reserve and Release, upgrades included
	closed   bool
	wg       sync.WaitGroup // one per reservation, for CloseAll
}

// Reserve takes one of max places. It returns false when max are taken
// or CloseAll was called; then the caller must not Release.
func (r *Registry) Reserve(max int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.reserved >= max {
		return false
	}
	r.reserved++
	r.wg.Add(1)
	return true
}

// Release gives back a place taken by Reserve.
func (r *Registry) Release() {
	r.mu.Lock()
	r.reserved--
	r.mu.Unlock()
	r.wg.Done()
}

// Track records p so that CloseAll closes it. After CloseAll, p is closed
// at once (ErrClosed) instead: a connection upgraded during shutdown ends
// with a going-away close frame as soon as it runs.
func (r *Registry) Track(p *Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		p.Close(ErrClosed)
		return
	}
	if r.peers == nil {
		r.peers = make(map[*Peer]struct{})
	}
	r.peers[p] = struct{}{}
}

// Untrack forgets p (its connection has ended).
func (r *Registry) Untrack(p *Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.peers, p)
}

// CloseAll refuses new reservations, closes every tracked peer with
// ErrClosed (close code 1001, going away) and waits until every place is
// released. It is idempotent.
func (r *Registry) CloseAll() {
	r.mu.Lock()
	r.closed = true
	for p := range r.peers {
		p.Close(ErrClosed)
	}
	r.mu.Unlock()
	r.wg.Wait()
}
