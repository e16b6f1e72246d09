package stream

import (
	"sync"
	"time"
)

// SubjectBytes is what the embedded server holds in memory for each
// distinct subject a stream retains a message on (its per-subject state):
// measured 190–216 B on nats-server v2.15 between 10,000 and 60,000
// subjects (TestSubjectHeapCost checks the bound); rounded up. LIVELOG's
// subjects end in the device ID, so every device with retained entries
// costs this. UPLINKS's do not since uplinks are batched (one subject for
// every batch); messages of the version before, on the device's subject,
// are only there until storage has them after an upgrade.
const SubjectBytes = 256

// DeviceBytes is the memory a device's presence in the streams costs: its
// LIVELOG subject and its entry in deviceBudget.
const DeviceBytes = SubjectBytes + 128

// deviceShare is the part of the process's memory (memlimit) the devices
// with entries in the embedded server may take by default: 1/16, 25 MiB
// at GOMEMLIMIT=400MiB, 68,266 devices.
const deviceShare = 16

// deviceBudget bounds the distinct devices the streams hold entries of,
// so that a flood of uplinks naming new device IDs (AUTO_REGISTER admits
// any) cannot grow the server's per-subject state without bound. A device
// is counted from its first entry until it has sent nothing for one to
// two windows (the live log's LIVELOG_MAX_AGE: by then its entries have
// aged out); counting in two generations keeps expiry O(1) amortised.
type deviceBudget struct {
	mu        sync.Mutex
	max       int
	window    time.Duration
	rotated   time.Time
	cur, prev map[string]struct{}
}

func newDeviceBudget(maxDevices int, window time.Duration) *deviceBudget {
	return &deviceBudget{max: maxDevices, window: window, cur: map[string]struct{}{}}
}

// admit reports whether an entry of device may go on the streams at now:
// always for a device already counted, and for a new one while fewer than
// max are.
func (d *deviceBudget) admit(now time.Time, device string) bool {
	if d == nil {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch age := now.Sub(d.rotated); {
	case d.rotated.IsZero():
		d.rotated = now
	case age >= 2*d.window:
		d.prev, d.cur, d.rotated = nil, map[string]struct{}{}, now
	case age >= d.window:
		d.prev, d.cur, d.rotated = d.cur, make(map[string]struct{}, len(d.cur)/2), now
	}
	if _, ok := d.cur[device]; ok {
		return true
	}
	if _, ok := d.prev[device]; ok {
		delete(d.prev, device)
		d.cur[device] = struct{}{}
		return true
	}
	if len(d.cur)+len(d.prev) >= d.max {
		return false
	}
	d.cur[device] = struct{}{}
	return true
}

// state is the number of devices counted, and the bound.
func (d *deviceBudget) state() (held, maxDevices int) {
	if d == nil {
		return 0, 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.cur) + len(d.prev), d.max
}
