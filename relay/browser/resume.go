package browser

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"

	"github.com/nbiot-live/nbiot-live/relay/upstream"
)

// ParseResume reads since= and tail= from a /device-logs query, with the
// rules of coap-server's /ws: since is a seq (an unsigned integer), tail
// an integer from 0 to upstream.MaxTail, at most one of them, each given
// once. Neither means live only. The error is a message for the client.
func ParseResume(q url.Values) (upstream.Resume, error) {
	since, hasSince := q["since"]
	tail, hasTail := q["tail"]
	switch {
	case hasSince && hasTail:
		return upstream.Resume{}, errors.New("give since or tail, not both")
	case len(since) > 1 || len(tail) > 1:
		return upstream.Resume{}, errors.New("give since or tail once")
	case hasSince:
		n, err := strconv.ParseUint(since[0], 10, 64)
		if err != nil {
			return upstream.Resume{}, errors.New("since: want a seq, a non-negative integer")
		}
		return upstream.Resume{Mode: upstream.Since, N: n}, nil
	case hasTail:
		n, err := strconv.ParseUint(tail[0], 10, 64)
		if err != nil || n > upstream.MaxTail {
			return upstream.Resume{}, fmt.Errorf("tail: want an integer from 0 to %d", upstream.MaxTail)
		}
		return upstream.Resume{Mode: upstream.Tail, N: n}, nil
	default:
		return upstream.LiveOnly, nil
	}
}
