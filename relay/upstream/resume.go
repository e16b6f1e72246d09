package upstream

import (
	"net/url"
	"strconv"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// MaxTail is the largest tail a watcher (and coap-server's /ws) accepts.
const MaxTail = livelog.MaxTail

// Mode says where a watcher's stream starts.
type Mode int

// Start modes of a Resume.
const (
	Live  Mode = iota // entries from now on (no since, no tail)
	Since             // every retained entry with a larger seq first
	Tail              // the last N retained entries first
)

// Resume is where a watcher's stream starts: live, since=N or tail=N, with
// the meaning of coap-server's /ws.
type Resume struct {
	Mode Mode
	N    uint64
}

// LiveOnly is the zero Resume: entries from now on.
var LiveOnly = Resume{}

// query adds since= or tail= to q.
func (r Resume) query(q url.Values) {
	switch r.Mode {
	case Since:
		q.Set("since", strconv.FormatUint(r.N, 10))
	case Tail:
		q.Set("tail", strconv.FormatUint(r.N, 10))
	}
}

// String is the query form (since=N, tail=N or live), for logs.
func (r Resume) String() string {
	switch r.Mode {
	case Since:
		return "since=" + strconv.FormatUint(r.N, 10)
	case Tail:
		return "tail=" + strconv.FormatUint(r.N, 10)
	default:
		return "live"
	}
}

// backlog bounds the history frames coap-server sends for r before live
// ones (the count is unknown until they arrive): a tail's N, or for since
// a recovered:false status and MaxTail entries (coap-server retains at
// most that many per device by default; a longer catch-up relies on the
// browser reading as fast as it arrives).
func (r Resume) backlog() int {
	switch r.Mode {
	case Tail:
		return int(min(r.N, MaxTail))
	case Since:
		return MaxTail + 1
	default:
		return 0
	}
}
