// Package clip shortens text that outside parties supply (a device's
// identity, a downlink's key, a REST service's error message) before it
// goes into a log line or an error, so that they cannot make either as
// large as they like.
package clip

import "unicode/utf8"

// String returns s if it is at most n bytes long; else its first n bytes,
// cut back to the start of a UTF-8 sequence, followed by "…".
func String(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := max(n, 0)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}
