package browser

import (
	"net/http"
	"net/url"
	"strings"
)

// Origins is the ALLOWED_ORIGINS policy for the WebSocket upgrade. A
// browser always sends Origin on a WebSocket handshake (RFC 6455 §4.1,
// item 8), and a page on any site can open one with the user's cookies or
// a token it got hold of, so the relay only accepts origins it was told
// about (cross-site WebSocket hijacking). Requests without Origin come from
// non-browser clients, which hold the token themselves: they are allowed.
type Origins struct {
	// Any is set by an explicit "*" entry.
	Any bool
	// allowed holds scheme://host[:port] in lower case.
	allowed map[string]struct{}
}

// ParseOrigins parses a comma-separated list such as
// "https://app.example.com,http://localhost:3000" or "*". Each entry must be
// an origin (scheme and host, no path); the error names the bad entry.
func ParseOrigins(list string) (Origins, error) {
	o := Origins{allowed: make(map[string]struct{})}
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if e == "*" {
			o.Any = true
			continue
		}
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return Origins{}, &OriginError{Entry: e}
		}
		o.allowed[strings.ToLower(u.Scheme+"://"+u.Host)] = struct{}{}
	}
	return o, nil
}

// OriginError names an ALLOWED_ORIGINS entry that is not an origin.
type OriginError struct{ Entry string }

// Error implements error; origins are not secret, so the entry is named.
func (e *OriginError) Error() string {
	return "not an origin (want scheme://host[:port]): " + e.Entry
}

// Allowed reports whether r's Origin may open a WebSocket: no Origin, the
// relay's own origin (its Live Logs page), a listed origin, or any with "*".
func (o Origins) Allowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || o.Any {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	_, ok := o.allowed[strings.ToLower(u.Scheme+"://"+u.Host)]
	return ok
}
