package browser

import (
	"net/url"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/relay/upstream"
)

// ParseResume reads since= and tail= from a /device-logs query with the
// rules of coap-server's /ws (livelog.ParseStart), so that whatever the
// relay accepts it can pass upstream. Neither means live only. The error
// is a message for the client.
func ParseResume(q url.Values) (upstream.Resume, error) {
	since, tail, err := livelog.ParseStart(q)
	switch {
	case err != nil:
		return upstream.Resume{}, err
	case since >= 0:
		return upstream.Resume{Mode: upstream.Since, N: uint64(since)}, nil
	case tail >= 0:
		return upstream.Resume{Mode: upstream.Tail, N: uint64(tail)}, nil
	default:
		return upstream.LiveOnly, nil
	}
}
