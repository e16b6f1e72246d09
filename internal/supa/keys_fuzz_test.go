package supa

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// checkKey checks the documented rules for one key: KindOf by prefix, then
// two dots; CheckServiceKey nil exactly for an sb_secret_ key or a
// legacy JWT whose role is service_role, and otherwise ErrServiceKey with
// one of its two fixed texts (so never the key); Headers and SetUserToken
// put the key as apikey always and as Authorization only when it is no sb_
// key, and the user's token as the Authorization.
func checkKey(t *testing.T, key string) {
	t.Helper()
	var kind Kind
	switch {
	case strings.HasPrefix(key, "sb_secret_"):
		kind = KindSecret
	case strings.HasPrefix(key, "sb_publishable_"):
		kind = KindPublishable
	case len(strings.Split(key, ".")) == 3:
		kind = KindLegacyJWT
	}
	if got := KindOf(key); got != kind {
		t.Fatalf("KindOf(%q) = %v, want %v", key, got, kind)
	}
	err := CheckServiceKey(key)
	service := kind == KindSecret || kind == KindLegacyJWT && JWTRole(key) == "service_role"
	if (err == nil) != service {
		t.Fatalf("CheckServiceKey(%q) = %v, want service role %v", key, err, service)
	}
	if err != nil {
		want := ErrServiceKey.Error()
		if kind == KindPublishable {
			want += " (got a publishable key, which RLS keeps from writing)"
		}
		if !errors.Is(err, ErrServiceKey) || err.Error() != want {
			t.Fatalf("CheckServiceKey(%q) = %q, want %q", key, err, want)
		}
	}
	h := Headers(key)
	authz, bearer := h["Authorization"]
	if h["apikey"] != key || bearer == strings.HasPrefix(key, "sb_") || bearer && authz != "Bearer "+key || len(h) > 2 {
		t.Fatalf("Headers(%q) = %v", key, h)
	}
	hh := http.Header{}
	SetUserToken(hh, key, "user-token")
	if hh.Get("Authorization") != "Bearer user-token" || hh.Get("apikey") != key {
		t.Fatalf("SetUserToken(%q): %v", key, hh)
	}
}

// roleClaims are the string values of the keys of JSON object b that
// match "role" ignoring case, read token by token.
func roleClaims(b []byte) []string {
	d := json.NewDecoder(bytes.NewReader(b))
	if tok, _ := d.Token(); tok != json.Delim('{') {
		return nil
	}
	var roles []string
	for d.More() {
		k, _ := d.Token()
		var v json.RawMessage
		if d.Decode(&v) != nil {
			return roles
		}
		var s string
		if strings.EqualFold(k.(string), "role") && v[0] == '"' && json.Unmarshal(v, &s) == nil {
			roles = append(roles, s)
		}
	}
	return roles
}

// FuzzKeys feeds JWTRole and the key rules arbitrary strings, and tokens
// made of a fuzzed header, role and signature. It must never panic; a role
// is read only from a string of exactly three dot-separated parts whose
// middle is unpadded base64url of a JSON object, and is that object's role
// claim (a string; the key matched ignoring case, as encoding/json does);
// a made token gives back its role; checkKey's rules hold for both.
func FuzzKeys(f *testing.F) {
	const anon = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZSIsInJlZiI6InByb2oiLCJyb2xlIjoiYW5vbiIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoyMDAwMDAwMDAwfQ.c2ln"
	const service = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZSIsInJlZiI6InByb2oiLCJyb2xlIjoic2VydmljZV9yb2xlIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjIwMDAwMDAwMDB9.c2ln"
	f.Add(anon, "eyJhbGciOiJIUzI1NiJ9", "anon", "c2ln")
	f.Add(service, "eyJhbGciOiJIUzI1NiJ9", "service_role", "c2ln")
	f.Add("sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz", "", "Service_Role", "")
	f.Add("sb_publishable_ZAfBJKBhsWMpJhBcxpMZHg_qTjbOqKV", "sb_secret_x", "service_role", "")
	f.Add("a.eyJyb2xlIjoic2VydmljZV9yb2xlIn0=.b", "", "", "")   // padded
	f.Add("a.eyJyb2xlIjpbInNlcnZpY2Vfcm9sZSJdfQ.b", "", "", "") // role an array
	f.Add("a.eyJST0xFIjoic2VydmljZV9yb2xlIn0.b", "", "", "")    // ROLE
	f.Add("a.bnVsbA.b", "", "", "")                             // null
	f.Add("a.e30.b.c", "", "", "")
	f.Add("..", "", "\xff", "")
	f.Add("not a key", "", "", "")
	f.Fuzz(func(t *testing.T, tok, header, role, sig string) {
		checkKey(t, tok)
		if r := JWTRole(tok); r != "" {
			parts := strings.Split(tok, ".")
			if len(parts) != 3 || strings.ContainsAny(parts[1], "=+/") {
				t.Fatalf("JWTRole(%q) = %q from no unpadded base64url JWT", tok, r)
			}
			b, err := base64.URLEncoding.WithPadding(base64.NoPadding).DecodeString(parts[1])
			if err != nil || !json.Valid(b) {
				t.Fatalf("JWTRole(%q) = %q from payload %q", tok, r, b)
			}
			if roles := roleClaims(b); !slices.Contains(roles, r) {
				t.Fatalf("JWTRole(%q) = %q, payload %q has roles %q", tok, r, b, roles)
			}
		}

		payload, err := json.Marshal(map[string]any{"iss": "supabase", "role": role, "exp": 2000000000})
		if err != nil {
			t.Fatal(err)
		}
		var want struct{ Role string }
		if err := json.Unmarshal(payload, &want); err != nil {
			t.Fatal(err)
		}
		made := strings.ReplaceAll(header, ".", "") + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + strings.ReplaceAll(sig, ".", "")
		if got := JWTRole(made); got != want.Role {
			t.Fatalf("JWTRole(%q) = %q, want %q", made, got, want.Role)
		}
		checkKey(t, made)
	})
}
