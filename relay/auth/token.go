// Package auth authenticates the relay's browsers: it finds the user's
// Supabase JWT in a WebSocket upgrade request and verifies it against the
// project's JWKS (ES256/RS256) or the legacy HS256 secret.
package auth

import (
	"errors"
	"net/http"
	"strings"
)

// Subprotocol is the WebSocket subprotocol the relay speaks. A browser
// cannot set headers on a WebSocket, so it may carry its token as a
// Sec-WebSocket-Protocol entry; it then offers Subprotocol too, and the
// relay echoes only that one, never the entry holding the token
// (RFC 6455 §4.2.2: the server selects one of the offered protocols).
//
// Browser convention:
//
//	new WebSocket(url, ["nbiot-live", "access_token." + jwt])
//
// A bare JWT entry (`["nbiot-live", jwt]`) is accepted as well.
const Subprotocol = "nbiot-live"

// ProtocolTokenPrefix marks the Sec-WebSocket-Protocol entry holding the token.
const ProtocolTokenPrefix = "access_token."

// MaxTokenLen bounds a token: Supabase access tokens are about 1 KiB; a
// longer one is rejected before any parsing or key lookup.
const MaxTokenLen = 8192

// Token sources, as reported by FromRequest (and used as a metric label).
const (
	SourceHeader      = "header"
	SourceSubprotocol = "subprotocol"
	SourceQuery       = "query"
)

// Sentinel errors of token extraction.
var (
	ErrNoToken       = errors.New("auth: no token")
	ErrTokenTooLarge = errors.New("auth: token too large")
)

// FromRequest returns the bearer token of r and where it was found: the
// Authorization header first, then a Sec-WebSocket-Protocol entry, then the
// access_token query parameter (links from an existing app).
func FromRequest(r *http.Request) (token, source string, err error) {
	if h := r.Header.Get("Authorization"); h != "" {
		t, ok := bearer(h)
		if !ok {
			return "", SourceHeader, ErrNoToken
		}
		return checkLen(t, SourceHeader)
	}
	if t, ok := FromProtocols(r.Header.Values("Sec-WebSocket-Protocol")); ok {
		return checkLen(t, SourceSubprotocol)
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return checkLen(t, SourceQuery)
	}
	return "", "", ErrNoToken
}

func checkLen(t, source string) (string, string, error) {
	if len(t) > MaxTokenLen {
		return "", source, ErrTokenTooLarge
	}
	return t, source, nil
}

// bearer parses "Bearer <token>" (scheme case-insensitive, RFC 6750 §2.1).
func bearer(h string) (string, bool) {
	const prefix = "bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	t := strings.TrimSpace(h[len(prefix):])
	return t, t != ""
}

// FromProtocols finds the token among Sec-WebSocket-Protocol header values
// (each a comma-separated list, RFC 6455 §11.3.4): an entry
// "access_token.<jwt>", or else an entry shaped like a JWT (three
// dot-separated parts, the header starting "eyJ").
func FromProtocols(values []string) (string, bool) {
	var bare string
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			p = strings.TrimSpace(p)
			if !isToken(p) {
				continue // not a valid protocol entry (RFC 6455 §4.1: a token)
			}
			if t, ok := strings.CutPrefix(p, ProtocolTokenPrefix); ok && t != "" {
				return t, true
			}
			if bare == "" && looksLikeJWT(p) {
				bare = p
			}
		}
	}
	return bare, bare != ""
}

// isToken reports whether s is an HTTP token (RFC 9110 §5.6.2), which every
// Sec-WebSocket-Protocol entry must be; JWTs (base64url and dots) are.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func looksLikeJWT(s string) bool {
	return strings.HasPrefix(s, "eyJ") && strings.Count(s, ".") == 2
}

// OffersSubprotocol reports whether the client offered Subprotocol.
func OffersSubprotocol(r *http.Request) bool {
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if strings.TrimSpace(p) == Subprotocol {
				return true
			}
		}
	}
	return false
}
