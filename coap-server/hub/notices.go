package hub

import (
	"encoding/json"
	"sync"

	"github.com/nbiot-live/nbiot-live/coap-server/stream"
)

// Notices travel on core NATS, so LIVELOG's limit on a message does not
// apply to them: any client allowed to publish on the notification
// subjects (another instance, another version) can send one of up to
// NATS's max_payload (1 MiB by default), naming a position far ahead.
const (
	// maxNoticeBytes: a notice larger than the largest live-log entry is
	// no report of ours and is dropped before it is decoded or held.
	maxNoticeBytes = stream.MaxEntryBytes
	// maxHeldNotices bounds notices waiting for their entry by count, so
	// that delivered's scan of them stays short.
	maxHeldNotices = 256
	// maxHeldNoticeBytes bounds them by size: 1 MiB, 16 notices of the
	// largest size, and the 256 held at most at a report's real size (a
	// few hundred bytes) many times over. By count alone, 256 of NATS's
	// 1 MiB payloads pinned 256 MiB.
	maxHeldNoticeBytes = 1 << 20
)

type heldNotice struct {
	of     uint64
	device string
	entry  []byte
}

// size is what a held notice pins, counted against maxHeldNoticeBytes.
func (h heldNotice) size() int { return len(h.entry) + len(h.device) }

// notices orders retransmission reports after the entries they name.
type notices struct {
	mu    sync.Mutex
	last  uint64 // highest position delivered
	held  []heldNotice
	bytes int // the sum of held's sizes
}

// ready reports whether a notice about position of may go out now; if
// not, it is held, and the oldest held are dropped (dropped says how
// many) until both bounds are kept: they are reports, never retained, and
// the entry each names is what matters.
func (n *notices) ready(of uint64, device string, entry []byte) (ok bool, dropped int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if of <= n.last {
		return true, 0
	}
	h := heldNotice{of: of, device: device, entry: entry}
	for len(n.held) > 0 && (len(n.held) >= maxHeldNotices || n.bytes+h.size() > maxHeldNoticeBytes) {
		n.bytes -= n.held[0].size()
		n.held[0] = heldNotice{} // the array outlives the slice's start: let the entry go
		n.held = n.held[1:]
		dropped++
	}
	n.held = append(n.held, h)
	n.bytes += h.size()
	return false, dropped
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
			n.bytes -= h.size()
		} else {
			keep = append(keep, h)
		}
	}
	clear(n.held[len(keep):]) // what was freed is not pinned by the array
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
