package browser

import (
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// plainOrigin is an origin as a browser writes it (RFC 6454 §6.2): an
// ASCII scheme://host[:port], no path, query, fragment or user; for these
// the policy is a plain comparison, ignoring case.
var plainOrigin = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]*)?$`)

// FuzzOrigins checks ParseOrigins and Allowed on arbitrary lists, Origin
// headers and relay hosts. ParseOrigins never panics; a refused list names
// one of its own entries (trimmed, not empty, not "*"); an accepted one is
// "*" if any entry is, and its members are lower-case http(s)://host[:port],
// each the member of one accepted entry parsed alone. Allowed never panics;
// no Origin or "*" allows; each member is allowed, in any case; an Origin
// that is no URL with a host is refused unless it is absent or "*"; and for
// a browser's origin (plainOrigin) the answer is exactly: its host:port is
// the relay's Host, or it equals a member ignoring case (scheme and port
// count, a default port written out is another origin).
func FuzzOrigins(f *testing.F) {
	f.Add(" https://app.example.com , http://localhost:3000", "https://app.example.com", "relay.example.com:8090")
	f.Add("https://app.example.com", "HTTPS://APP.example.com", "relay.example.com")
	f.Add("https://app.example.com", "http://app.example.com", "relay.example.com")
	f.Add("https://app.example.com", "https://app.example.com:443", "relay.example.com")
	f.Add("http://localhost:3000", "http://localhost:3001", "relay.example.com")
	f.Add("http://localhost:3000", "http://localhost", "relay.example.com")
	f.Add("https://app.example.com", "https://app.example.com.evil.com", "relay.example.com")
	f.Add("https://app.example.com", "https://evil.com/https://app.example.com", "relay.example.com")
	f.Add("https://app.example.com", "null", "relay.example.com")
	f.Add("", "http://relay.example.com:8090", "relay.example.com:8090")
	f.Add("", "https://RELAY.example.com", "relay.example.com")
	f.Add("*", "https://anything.example", "relay.example.com")
	f.Add("https://a.com,*", "", "relay.example.com")
	f.Add("http://[::1]:3000", "http://[::1]:3000", "[::1]:8090")
	f.Add("https://App.Example.com/", "https://app.example.com", "relay")
	f.Add("example.com", "https://example.com", "relay")
	f.Add("https://a.com/path", "https://a.com", "relay")
	f.Add("ftp://a.com", "ftp://a.com", "relay")
	f.Add("https://a.com?x=1,https://user@a.com", "https://a.com", "relay")
	f.Add("https://a.com#x", "https://a.com", "relay")
	f.Add(",,, ,", "%zz", "")
	f.Fuzz(func(t *testing.T, list, origin, host string) {
		entries := strings.Split(list, ",")
		o, err := ParseOrigins(list)
		if err != nil {
			var oe *OriginError
			if !errors.As(err, &oe) || oe.Entry == "" || oe.Entry == "*" || strings.TrimSpace(oe.Entry) != oe.Entry ||
				!strings.Contains(list, oe.Entry) || !strings.Contains(err.Error(), oe.Entry) {
				t.Fatalf("ParseOrigins(%q): %v", list, err)
			}
			return
		}
		star := false
		union := map[string]struct{}{}
		for _, e := range entries {
			e = strings.TrimSpace(e)
			if e == "*" {
				star = true
				continue
			}
			one, err := ParseOrigins(e)
			if err != nil || one.Any || len(one.allowed) > 1 || (e != "" && len(one.allowed) != 1) {
				t.Fatalf("list %q accepted, its entry %q alone: %+v, %v", list, e, one, err)
			}
			if e != "" {
				// scheme://host[:port], no path (but "/"), query or user;
				// a fragment is ignored.
				rest, _, _ := strings.Cut(e, "#")
				rest, query, _ := strings.Cut(rest, "?")
				_, rest, ok := strings.Cut(rest, "://")
				authority, path, _ := strings.Cut(rest, "/")
				if !ok || query != "" || path != "" || authority == "" || strings.Contains(authority, "@") {
					t.Fatalf("list %q accepted, its entry %q is no origin", list, e)
				}
			}
			for m := range one.allowed {
				union[m] = struct{}{}
			}
		}
		if o.Any != star || len(o.allowed) != len(union) {
			t.Fatalf("ParseOrigins(%q) = %+v, want Any %v and members %v", list, o, star, union)
		}
		for m := range o.allowed {
			if _, ok := union[m]; !ok {
				t.Fatalf("ParseOrigins(%q): member %q of no entry", list, m)
			}
			if m != strings.ToLower(m) || !(strings.HasPrefix(m, "http://") || strings.HasPrefix(m, "https://")) ||
				strings.ContainsAny(m[strings.Index(m, "://")+3:], "/?@") {
				t.Fatalf("ParseOrigins(%q): member %q", list, m)
			}
		}

		allowed := func(origin, host string) bool {
			r := &http.Request{Header: http.Header{}, Host: host}
			if origin != "" {
				r.Header.Set("Origin", origin)
			}
			return o.Allowed(r)
		}
		for m := range o.allowed {
			for _, v := range []string{m, strings.ToUpper(m)} {
				if !allowed(v, "relay.invalid") {
					t.Fatalf("list %q: member %q refused as %q", list, m, v)
				}
			}
		}

		got := allowed(origin, host)
		switch {
		case origin == "" || o.Any:
			if !got {
				t.Fatalf("list %q: Origin %q refused", list, origin)
			}
		case plainOrigin.MatchString(origin):
			authority := origin[strings.Index(origin, "://")+3:]
			want := strings.EqualFold(authority, host)
			for m := range o.allowed {
				want = want || strings.EqualFold(origin, m)
			}
			if _, err := url.Parse(origin); err != nil {
				want = false
			}
			if got != want {
				t.Fatalf("list %q, Host %q: Origin %q allowed %v, want %v", list, host, origin, got, want)
			}
		default:
			if u, err := url.Parse(origin); got && (err != nil || u.Host == "") {
				t.Fatalf("list %q, Host %q: Origin %q, no URL with a host, allowed", list, host, origin)
			}
		}
	})
}
