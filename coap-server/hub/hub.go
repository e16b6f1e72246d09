// Package hub fans live-log frames out to WebSocket subscribers. A frame is
// encoded once (a websocket.PreparedMessage) and the same pointer is queued
// for every matching subscriber, so a broadcast costs one channel send per
// subscriber and no allocation. Publish never blocks: a subscriber whose
// queue is full is disconnected by its wspeer.Peer and counted.
package hub

import (
	"sync"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Sender is what the hub needs of a subscriber: a non-blocking send that
// reports false when the frame was not queued.
type Sender interface {
	Send(*websocket.PreparedMessage) bool
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
}

// New returns an empty hub that counts on m.
func New(m *Metrics) *Hub {
	return &Hub{
		byDevice: make(map[string]map[*Subscription]struct{}),
		all:      make(map[*Subscription]struct{}),
		metrics:  m,
	}
}

// Broadcast encodes e once and publishes it to its device's subscribers.
func (h *Hub) Broadcast(e *livelog.Entry) {
	b, err := e.Marshal()
	if err != nil {
		// Decode validates every number that JSON cannot carry; this is a bug.
		h.metrics.EncodeErrors.Inc()
		return
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
	if err != nil {
		h.metrics.EncodeErrors.Inc()
		return
	}
	h.Publish(e.DeviceID, pm)
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
func (h *Hub) Publish(deviceID string, frame *websocket.PreparedMessage) (delivered int) {
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
	if dropped > 0 {
		h.metrics.Dropped.Add(float64(dropped))
	}
	return delivered
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
