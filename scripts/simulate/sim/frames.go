package sim

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// frameKey is how a live-log frame is matched to the uplink that caused it:
// (deviceId, uplink_count). A device sends one uplink at a time and frames
// of one device arrive in order, so sends sharing a key (uplink_count
// restarts after a reboot) are matched first in, first out.
type frameKey struct {
	device string
	count  uint32
}

// Kinds of frame, as parseFrame sees them.
type frameKind int

const (
	frameBad    frameKind = iota // not a live-log frame: counted as unexpected
	frameOther                   // a downlink, error or status frame: ignored
	frameUplink                  // an uplink frame: matched to a send
)

// parseFrame extracts the key of an uplink frame.
func parseFrame(b []byte) (frameKey, frameKind) {
	var f struct {
		DeviceID string          `json:"deviceId"`
		Type     string          `json:"type"`
		Data     json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &f); err != nil || !livelog.ValidDeviceID(f.DeviceID) {
		return frameKey{}, frameBad
	}
	if f.Type != livelog.TypeUplink {
		return frameKey{device: f.DeviceID}, frameOther
	}
	var data struct {
		UplinkCount *uint32 `json:"uplink_count"`
	}
	if err := json.Unmarshal(f.Data, &data); err != nil || data.UplinkCount == nil {
		return frameKey{device: f.DeviceID}, frameBad
	}
	return frameKey{device: f.DeviceID, count: *data.UplinkCount}, frameUplink
}

// expectation is one send waiting for its frame.
type expectation struct {
	key        frameKey
	start      time.Time
	answered   bool // got 2.04: a frame must come
	answeredAt time.Time
	matched    bool
}

// matcher pairs frames with sends. Its size is bounded by the flags: a send
// that fails is forgotten at once, an answered one once its frame arrives
// or FrameWait passes (then it counts as missing), so at most
// rate × (request timeout + frame wait) sends are tracked.
type matcher struct {
	stats *Stats
	ours  func(device string) bool
	wait  time.Duration
	now   func() time.Time

	mu         sync.Mutex
	byKey      map[frameKey][]*expectation
	waiting    int // answered, not yet matched
	frames     uint64
	missing    uint64
	unexpected uint64
	changed    chan struct{} // poked after every match
}

func newMatcher(stats *Stats, ours func(string) bool, wait time.Duration) *matcher {
	return &matcher{
		stats: stats, ours: ours, wait: wait, now: time.Now,
		byKey:   make(map[frameKey][]*expectation),
		changed: make(chan struct{}, 1),
	}
}

// expect registers a send before it goes out: its frame may arrive before
// the CoAP answer, since the server broadcasts first.
func (m *matcher) expect(device string, count uint32, start time.Time) *expectation {
	e := &expectation{key: frameKey{device, count}, start: start}
	m.mu.Lock()
	m.byKey[e.key] = append(m.byKey[e.key], e)
	m.mu.Unlock()
	return e
}

// done records the outcome of e's send. A send that was not answered 2.04
// may or may not have reached the server, so its frame is not required.
func (m *matcher) done(e *expectation, changed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.matched {
		return
	}
	if changed {
		e.answered, e.answeredAt = true, m.now()
		m.waiting++
		return
	}
	m.remove(e)
}

func (m *matcher) remove(e *expectation) {
	list := m.byKey[e.key]
	for i, x := range list {
		if x == e {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(m.byKey, e.key)
	} else {
		m.byKey[e.key] = list
	}
}

// frame matches one received frame.
func (m *matcher) frame(b []byte, at time.Time) {
	key, kind := parseFrame(b)
	if kind == frameOther || kind != frameBad && !m.ours(key.device) {
		return // not an uplink, or another sender's device
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	list := m.byKey[key]
	if kind == frameBad || len(list) == 0 {
		m.unexpected++
		return
	}
	e := list[0]
	m.remove(e)
	e.matched = true
	if e.answered {
		m.waiting--
	}
	m.frames++
	m.stats.frame(at.Sub(e.start))
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// expire counts answered sends whose frame is later than the frame wait as
// missing and forgets them (all of them when final).
func (m *matcher) expire(final bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cutoff := m.now().Add(-m.wait)
	for key, list := range m.byKey {
		kept := list[:0]
		for _, e := range list {
			if e.answered && (final || e.answeredAt.Before(cutoff)) {
				m.missing++
				m.waiting--
				continue
			}
			kept = append(kept, e)
		}
		if len(kept) == 0 {
			delete(m.byKey, key)
		} else {
			m.byKey[key] = kept
		}
	}
}

// drain waits until every answered send has its frame, or until the frame
// wait has passed since the last send was answered.
func (m *matcher) drain() {
	deadline := time.NewTimer(m.wait)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		waiting := m.waiting
		m.mu.Unlock()
		if waiting == 0 {
			return
		}
		select {
		case <-m.changed:
		case <-deadline.C:
			return
		}
	}
}

func (m *matcher) snapshot(r *Result) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r.WS = true
	r.Frames, r.Missing, r.Unexpected = m.frames, m.missing, m.unexpected
}
