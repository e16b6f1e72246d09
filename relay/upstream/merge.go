package upstream

import (
	"time"
)

// merge ends a dedicated link once it is no longer needed: when the
// device's shared link is up and its ring covers the dedicated link's
// position, the watcher is sent the ring's entries after that position
// and moved to the shared link (the same no-gap, no-repeat attach as a
// new watcher's since=), and the dedicated link closes; when the device
// has no shared link any more, the dedicated link becomes it. It reports
// whether the link is no longer dedicated.
//
// Lock order: manager, shared link, dedicated link (nothing takes a
// link's lock and then the manager's).
func (m *Manager) merge(d *link) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.dedicated[d]; !ok {
		return true
	}
	shared := m.links[d.device]
	if shared == nil {
		delete(m.dedicated, d)
		d.dedicated.Store(false)
		m.links[d.device] = d
		m.cfg.Metrics.Dedicated.Dec()
		m.cfg.Metrics.Upstreams.Inc()
		m.cfg.Metrics.Merges.WithLabelValues(MergePromoted).Inc()
		return true
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.seen || shared.state != stateUp {
		return false
	}
	backlog, ok := shared.ring.since(d.last, shared.top())
	if !ok {
		return false
	}
	// A dedicated link that is down told its watchers "lost": the shared
	// link they join is up, so they hear "restored" before what it has.
	var (
		restored frame
		tell     bool
	)
	if d.state == stateDown {
		restored, tell = shared.status(StatusRestored)
	}
	for w := range d.watchers {
		if tell {
			m.cfg.Metrics.Statuses.WithLabelValues(StatusRestored).Inc()
			if !w.sender.Send(restored.pm, restored.cost) {
				m.cfg.Metrics.Dropped.WithLabelValues(DropSlowClient).Inc()
			}
		}
		shared.attachLocked(w, backlog)
		w.link = shared
		delete(d.watchers, w)
	}
	delete(m.dedicated, d)
	d.dedicated.Store(false)
	m.cfg.Metrics.Dedicated.Dec()
	m.cfg.Metrics.Merges.WithLabelValues(MergeJoined).Inc()
	d.cancel()
	return true
}

// mergeLater retries merge every MergeEvery while d is dedicated: its last
// entry may have reached it before the shared link, or the shared link
// may have been down.
func (m *Manager) mergeLater(d *link) {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.MergeEvery)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
			if m.merge(d) {
				return
			}
		}
	}
}
