package browser

import (
	"errors"
	"net/url"
	"strconv"

	"github.com/nbiot-live/nbiot-live/relay/upstream"
)

// The messages of coap-server's /ws for the same mistakes.
var (
	errSinceTail = errors.New("use since or tail, not both")
	errSince     = errors.New("since must be a live-log position: a non-negative integer (the seq of the last entry seen)")
	errTail      = errors.New("tail must be an integer from 0 to 1000")
)

// ParseResume reads since= and tail= from a /device-logs query with the
// rules of coap-server's /ws, so that whatever the relay accepts it can
// pass upstream: since is a seq (a non-negative integer below 2^63), tail
// an integer from 0 to upstream.MaxTail, not both. Neither means live
// only. The error is a message for the client.
func ParseResume(q url.Values) (upstream.Resume, error) {
	switch {
	case q.Has("since") && q.Has("tail"):
		return upstream.Resume{}, errSinceTail
	case q.Has("since"):
		n, err := strconv.ParseUint(q.Get("since"), 10, 63)
		if err != nil {
			return upstream.Resume{}, errSince
		}
		return upstream.Resume{Mode: upstream.Since, N: n}, nil
	case q.Has("tail"):
		n, err := strconv.ParseUint(q.Get("tail"), 10, 64)
		if err != nil || n > upstream.MaxTail {
			return upstream.Resume{}, errTail
		}
		return upstream.Resume{Mode: upstream.Tail, N: n}, nil
	default:
		return upstream.LiveOnly, nil
	}
}
