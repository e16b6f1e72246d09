package browser

import (
	"net/url"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/relay/upstream"
)

func TestParseResume(t *testing.T) {
	ok := map[string]upstream.Resume{
		"":                          upstream.LiveOnly,
		"since=0":                   {Mode: upstream.Since, N: 0},
		"since=9223372036854775807": {Mode: upstream.Since, N: 1<<63 - 1},
		"tail=0":                    {Mode: upstream.Tail, N: 0},
		"tail=1000":                 {Mode: upstream.Tail, N: 1000},
		"deviceId=X&tail=5":         {Mode: upstream.Tail, N: 5},
	}
	for q, want := range ok {
		v, _ := url.ParseQuery(q)
		got, err := ParseResume(v)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", q, got, err, want)
		}
	}
	bad := map[string]string{
		"since=":                    "since",
		"since=-1":                  "since",
		"since=1.5":                 "since",
		"since=abc":                 "since",
		"since=9223372036854775808": "since",
		"since=+1":                  "since",
		"tail=-1":                   "tail",
		"tail=1001":                 "tail",
		"tail=x":                    "tail",
		"tail=":                     "tail",
		"since=1&tail=1":            "not both",
		"tail=&since=":              "not both",
	}
	for q, word := range bad {
		v, _ := url.ParseQuery(q)
		_, err := ParseResume(v)
		if err == nil || !strings.Contains(err.Error(), word) {
			t.Errorf("%q: %v, want an error about %s", q, err, word)
		}
	}
}
