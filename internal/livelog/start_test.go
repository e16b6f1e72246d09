package livelog_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// FuzzParseStart feeds arbitrary queries (a /ws or /device-logs URL's) to
// ParseStart and checks it against the rule written out by hand: since is
// digits below 2^63, tail digits up to 1000, not both; anything else is
// refused, and nothing panics.
func FuzzParseStart(f *testing.F) {
	for _, q := range []string{"", "since=0", "tail=1000", "tail=1001", "since=9223372036854775807", "since=9223372036854775808",
		"tail=+1", "since=-1", "since=1&tail=1", "since=%30", "since=1&since=x", "tail", "tail=00000000000000000000"} {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		since, tail, err := livelog.ParseStart(q)
		wantSince, wantTail, ok := startRule(q)
		if (err == nil) != ok || (ok && (since != wantSince || tail != wantTail)) {
			t.Fatalf("%q: since %d tail %d (%v), want since %d tail %d (ok %v)", raw, since, tail, err, wantSince, wantTail, ok)
		}
	})
}

// startRule is the rule of since and tail, by hand.
func startRule(q url.Values) (since, tail int64, ok bool) {
	digits := func(s string, max uint64) (int64, bool) {
		if s == "" || strings.Trim(s, "0123456789") != "" {
			return -1, false
		}
		s = strings.TrimLeft(s, "0") // leading zeros are allowed
		if len(s) > 19 {
			return -1, false
		}
		var n uint64
		for _, c := range s {
			n = n*10 + uint64(c-'0')
		}
		return int64(n), n <= max
	}
	switch {
	case q.Has("since") && q.Has("tail"):
		return -1, -1, false
	case q.Has("since"):
		since, ok = digits(q.Get("since"), 1<<63-1)
		return since, -1, ok
	case q.Has("tail"):
		tail, ok = digits(q.Get("tail"), livelog.MaxTail)
		return -1, tail, ok
	}
	return -1, -1, true
}
