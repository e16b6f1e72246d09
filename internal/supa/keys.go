// Package supa is the one place that knows how to connect to Supabase: which
// headers a Supabase API key goes in (REST), a bounded HTTP client for
// REST calls, and pgx pools for DATABASE_URL. coap-server's device keys,
// downlinks and storage writers and the relay's access check use it, so the
// rules exist once.
package supa

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Kind is what sort of Supabase API key a string is.
type Kind int

// Key kinds. New keys (sb_secret_…, sb_publishable_…) are opaque strings;
// legacy keys are JWTs whose role claim says what they may do.
const (
	KindUnknown     Kind = iota
	KindSecret           // sb_secret_…: acts as service_role
	KindPublishable      // sb_publishable_…: acts as anon
	KindLegacyJWT        // a legacy anon or service_role JWT
)

// Prefixes of the new, non-JWT API keys.
const (
	SecretPrefix      = "sb_secret_"
	PublishablePrefix = "sb_publishable_"
)

// KindOf classifies key without verifying anything.
func KindOf(key string) Kind {
	switch {
	case strings.HasPrefix(key, SecretPrefix):
		return KindSecret
	case strings.HasPrefix(key, PublishablePrefix):
		return KindPublishable
	case strings.Count(key, ".") == 2:
		return KindLegacyJWT
	}
	return KindUnknown
}

// ErrServiceKey is returned by CheckServiceKey; it names the variable and
// never the key.
var ErrServiceKey = errors.New("SUPABASE_SERVICE_KEY: want a service_role JWT or an sb_secret_ key")

// CheckServiceKey reports whether key can act as service_role: an
// sb_secret_ key, or a legacy JWT whose role claim is service_role. It
// catches a publishable or anon key given by mistake, which RLS would keep
// from writing.
func CheckServiceKey(key string) error {
	switch KindOf(key) {
	case KindSecret:
		return nil
	case KindPublishable:
		return fmt.Errorf("%w (got a publishable key, which RLS keeps from writing)", ErrServiceKey)
	case KindLegacyJWT:
		if JWTRole(key) == "service_role" {
			return nil
		}
	}
	return ErrServiceKey
}

// SetKey puts an API key in h the way Supabase wants it (docs/pitfalls.md#postgrest-go):
// always as apikey; a legacy JWT also as Authorization: Bearer, while the
// new sb_secret_/sb_publishable_ keys, which are not JWTs, never go there.
func SetKey(h http.Header, key string) {
	for k, v := range Headers(key) {
		h.Set(k, v)
	}
	h.Set("Accept", "application/json")
}

// SetUserToken sets the headers of a request made on a signed-in user's
// behalf: the project's API key as SetKey does, then the user's access
// token as the Authorization, so RLS decides as that user.
func SetUserToken(h http.Header, apiKey, token string) {
	SetKey(h, apiKey)
	h.Set("Authorization", "Bearer "+token)
}

// Headers are the headers that carry key, for clients that take a map
// (postgrest-go): apikey always, Authorization: Bearer only when the key is
// not one of the new sb_ keys.
func Headers(key string) map[string]string {
	h := map[string]string{"apikey": key}
	if !strings.HasPrefix(key, "sb_") {
		h["Authorization"] = "Bearer " + key
	}
	return h
}

// JWTRole reads the role claim of a JWT without verifying it: Supabase
// verifies; this only tells a service_role key from an anon one.
func JWTRole(tok string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		Role string `json:"role"`
	}
	if json.Unmarshal(b, &c) != nil {
		return ""
	}
	return c.Role
}
