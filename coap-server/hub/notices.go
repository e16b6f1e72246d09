package hub

import (
	"encoding/json"
	"sync"
)

// maxHeldNotices bounds notices waiting for their entry (each at most a
// live-log entry's size); past it the oldest is dropped (a report, never
// retained: the entry it names is what matters).
const maxHeldNotices = 256

type heldNotice struct {
	of     uint64
	device string
	entry  []byte
}

// notices orders retransmission reports after the entries they name.
type notices struct {
	mu   sync.Mutex
	last uint64 // highest position delivered
	held []heldNotice
}

// ready reports whether a notice about position of may go out now; if
// not, it is held.
func (n *notices) ready(of uint64, device string, entry []byte) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if of <= n.last {
		return true
	}
	if len(n.held) >= maxHeldNotices {
		n.held = n.held[1:]
	}
	n.held = append(n.held, heldNotice{of: of, device: device, entry: entry})
	return false
}

// delivered records that seq went out and returns the notices it frees.
func (n *notices) delivered(seq uint64) []heldNotice {
	n.mu.Lock()
	defer n.mu.Unlock()
	if seq > n.last {
		n.last = seq
	}
	if len(n.held) == 0 {
		return nil
	}
	var out []heldNotice
	keep := n.held[:0]
	for _, h := range n.held {
		if h.of <= n.last {
			out = append(out, h)
		} else {
			keep = append(keep, h)
		}
	}
	n.held = keep
	return out
}

// ofSeq reads data.retransmission.of_seq of a notice (0 when absent).
func ofSeq(entry []byte) uint64 {
	var v struct {
		Data struct {
			Retransmission struct {
				OfSeq uint64 `json:"of_seq"`
			} `json:"retransmission"`
		} `json:"data"`
	}
	if json.Unmarshal(entry, &v) != nil {
		return 0
	}
	return v.Data.Retransmission.OfSeq
}
