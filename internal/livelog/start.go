package livelog

import (
	"errors"
	"net/url"
	"strconv"
)

// MaxTail is the largest tail=N a reader of the live log may ask for.
const MaxTail = 1000

// The messages for a client's mistakes in since= and tail=, alike on
// coap-server's /ws and the relay's /device-logs.
var (
	ErrSinceTail = errors.New("use since or tail, not both")
	ErrSince     = errors.New("since must be a live-log position: a non-negative integer (the seq of the last entry seen)")
	ErrTail      = errors.New("tail must be an integer from 0 to 1000")
)

// ParseStart reads where a reader's stream starts from a query: since=N
// (after position N, digits below 2^63) or tail=N (each device's last N
// entries, digits from 0 to MaxTail), not both; -1 for one not given,
// both -1 meaning live only. One rule for coap-server and the relay, so
// that whatever the relay accepts it can pass upstream.
func ParseStart(q url.Values) (since, tail int64, err error) {
	since, tail = -1, -1
	switch {
	case q.Has("since") && q.Has("tail"):
		return since, tail, ErrSinceTail
	case q.Has("since"):
		// ParseUint takes digits only: no sign, no spaces.
		n, err := strconv.ParseUint(q.Get("since"), 10, 63)
		if err != nil {
			return since, tail, ErrSince
		}
		since = int64(n)
	case q.Has("tail"):
		n, err := strconv.ParseUint(q.Get("tail"), 10, 64)
		if err != nil || n > MaxTail {
			return since, tail, ErrTail
		}
		tail = int64(n)
	}
	return since, tail, nil
}
