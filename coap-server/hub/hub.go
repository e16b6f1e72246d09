// Package hub fans live-log frames out to this instance's WebSocket
// subscribers. It is fed by the stream's live-log consumer, so it carries
// every instance's entries in stream order. A frame is encoded once (a
// websocket.PreparedMessage) and the same pointer is queued for every
// matching subscriber, so a broadcast costs one channel send per subscriber
// and no allocation. Publish never blocks: a subscriber whose queue is full
// is disconnected by its wspeer.Peer and counted.
package hub

import (
	"sync"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

// Frame is one encoded live-log frame.
type Frame struct {
	// Seq is the entry's live-log position; 0 for a notice, which is not
	// retained (a retransmission report).
	Seq uint64
	Msg *websocket.PreparedMessage
	// Cost is what the frame costs held (wspeer.FrameCost): the unit of a
	// subscriber's queue bound.
	Cost int
}

// NewFrame encodes the frame of an entry at seq (0: a notice).
func NewFrame(seq uint64, entry []byte) (*Frame, error) {
	b := entry
	if seq != 0 {
		b = livelog.AppendSeq(make([]byte, 0, len(entry)+24), seq, entry)
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
	if err != nil {
		return nil, err
	}
	return &Frame{Seq: seq, Msg: pm, Cost: wspeer.FrameCost(len(b))}, nil
}

// Sender is what the hub needs of a subscriber: a non-blocking send that
// reports false when the frame was not queued.
type Sender interface {
	Send(*Frame) bool
}

// Subscription is one registered subscriber; Close removes it.
type Subscription struct {
	hub     *Hub
	sender  Sender
	devices []string // nil = every device
	closed  bool     // guarded by hub.mu
}

// Hub is safe for concurrent use.
type Hub struct {
	mu       sync.RWMutex
	byDevice map[string]map[*Subscription]struct{}
	all      map[*Subscription]struct{}
	metrics  *Metrics

	order notices // notices wait for the entry they are about
}

// New returns an empty hub that counts on m.
func New(m *Metrics) *Hub {
	return &Hub{
		byDevice: make(map[string]map[*Subscription]struct{}),
		all:      make(map[*Subscription]struct{}),
		metrics:  m,
	}
}

// Feed encodes one entry from the stream and publishes it; it is the
// stream.FeedFunc of the instance's live-log consumer.
//
// A notice (seq 0) travels on core NATS and may overtake the entry it is
// about; one naming a position (data.retransmission.of_seq) not delivered
// yet is held until it is, so subscribers see the uplink, then its report.
// One larger than any entry is dropped, and so are the oldest held past
// maxHeldNoticeBytes (counted in NoticesLost).
func (h *Hub) Feed(seq uint64, deviceID string, entry []byte) {
	if seq == 0 {
		if len(entry) > maxNoticeBytes {
			h.metrics.NoticesLost.WithLabelValues(LostOversize).Inc()
			return
		}
		if of := ofSeq(entry); of > 0 {
			ok, dropped := h.order.ready(of, deviceID, entry)
			if dropped > 0 {
				h.metrics.NoticesLost.WithLabelValues(LostHeldFull).Add(float64(dropped))
			}
			if !ok {
				return // held; released by the Feed of that position
			}
		}
	}
	h.publishEntry(seq, deviceID, entry)
	if seq != 0 {
		for _, n := range h.order.delivered(seq) {
			h.publishEntry(0, n.device, n.entry)
		}
	}
}

// FeedFrom tells the hub that its feed (re)started after position last:
// the entries up to it will never come through Feed, so a notice about
// one of them goes out at once, not after the next entry (one held
// already is released). Without it, a copy of an uplink logged before a
// restart, or while the feed was stopped, waited for an unrelated entry.
func (h *Hub) FeedFrom(last uint64) {
	for _, n := range h.order.delivered(last) {
		h.publishEntry(0, n.device, n.entry)
	}
}

func (h *Hub) publishEntry(seq uint64, deviceID string, entry []byte) {
	if !h.watched(deviceID) {
		// Most entries of a fleet have no viewer: no frame to build.
		h.metrics.Frames.Inc()
		return
	}
	f, err := NewFrame(seq, entry)
	if err != nil {
		h.metrics.EncodeErrors.Inc()
		return
	}
	h.Publish(deviceID, f)
}

// Subscribe registers s for the frames of devices, or of every device when
// devices is empty.
func (h *Hub) Subscribe(s Sender, devices []string) *Subscription {
	sub := &Subscription{hub: h, sender: s, devices: devices}
	h.metrics.Subscribers.Inc()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(devices) == 0 {
		h.all[sub] = struct{}{}
		return sub
	}
	for _, d := range devices {
		set := h.byDevice[d]
		if set == nil {
			set = make(map[*Subscription]struct{})
			h.byDevice[d] = set
		}
		set[sub] = struct{}{}
	}
	return sub
}

// Close unregisters the subscription; it is idempotent.
func (s *Subscription) Close() {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	h.metrics.Subscribers.Dec()
	if len(s.devices) == 0 {
		delete(h.all, s)
		return
	}
	for _, d := range s.devices {
		if set := h.byDevice[d]; set != nil {
			delete(set, s)
			if len(set) == 0 {
				delete(h.byDevice, d)
			}
		}
	}
}

// Publish queues frame for every subscriber of deviceID and every
// all-devices subscriber, and returns how many took it.
func (h *Hub) Publish(deviceID string, frame *Frame) (delivered int) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	dropped := 0
	for sub := range h.byDevice[deviceID] {
		if sub.sender.Send(frame) {
			delivered++
		} else {
			dropped++
		}
	}
	for sub := range h.all {
		if sub.sender.Send(frame) {
			delivered++
		} else {
			dropped++
		}
	}
	h.metrics.Frames.Inc()
	switch {
	case dropped == 0:
	case frame.Seq == 0:
		h.metrics.NoticesDropped.Add(float64(dropped))
	default:
		h.metrics.Dropped.Add(float64(dropped))
	}
	return delivered
}

// watched reports whether any subscription would receive deviceID's frames.
func (h *Hub) watched(deviceID string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.all) > 0 || len(h.byDevice[deviceID]) > 0
}

// Len returns the number of subscriptions, for metrics and tests.
func (h *Hub) Len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := len(h.all)
	seen := make(map[*Subscription]struct{})
	for _, set := range h.byDevice {
		for s := range set {
			seen[s] = struct{}{}
		}
	}
	return n + len(seen)
}
