package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// jwksServer is a real HTTP JWKS endpoint whose key set a test can rotate.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []map[string]string
	fetches atomic.Int64
}

func newJWKSServer(t testing.TB) *jwksServer {
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": s.keys})
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) serve(keys ...map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = keys
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func ecJWK(t testing.TB, kid string) (*ecdsa.PrivateKey, map[string]string) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	x, y := make([]byte, 32), make([]byte, 32)
	k.X.FillBytes(x)
	k.Y.FillBytes(y)
	return k, map[string]string{"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "kid": kid, "alg": "ES256", "use": "sig"}
}

func rsaJWK(t testing.TB, kid string) (*rsa.PrivateKey, map[string]string) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k, map[string]string{"kty": "RSA", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes()), "kid": kid, "alg": "RS256", "use": "sig"}
}

const (
	issuer = "https://proj.supabase.co/auth/v1"
	secret = "legacy-secret-0123456789abcdef-0123456789"
)

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func claims(mut func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "11111111-1111-1111-1111-111111111111", "role": "authenticated",
		"aud": "authenticated", "iss": issuer, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()}
	if mut != nil {
		mut(c)
	}
	return c
}

func sign(t testing.TB, m jwt.SigningMethod, kid string, key any, c jwt.MapClaims) string {
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newVerifier(t testing.TB, o auth.Options) *auth.Verifier {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if o.Now == nil {
		o.Now = func() time.Time { return now }
	}
	v, err := auth.NewVerifier(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestJWKSRotationWithoutRestart(t *testing.T) {
	srv := newJWKSServer(t)
	k1, jwk1 := ecJWK(t, "kid-1")
	srv.serve(jwk1)
	v := newVerifier(t, auth.Options{JWKSURL: srv.URL, Issuer: issuer, UnknownKIDEvery: time.Hour})
	ctx := context.Background()
	if c, err := v.Verify(ctx, sign(t, jwt.SigningMethodES256, "kid-1", k1, claims(nil))); err != nil || c.Subject == "" || c.Raw["iss"] != issuer {
		t.Fatalf("ES256 kid-1: %v %+v", err, c)
	}
	fetched := srv.fetches.Load()

	// Rotation: the project now signs with an RS256 key kid-2 and has
	// revoked kid-1. The unknown kid triggers one refetch.
	k2, jwk2 := rsaJWK(t, "kid-2")
	srv.serve(jwk2)
	if _, err := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "kid-2", k2, claims(nil))); err != nil {
		t.Fatalf("RS256 kid-2 after rotation: %v", err)
	}
	if got := srv.fetches.Load(); got != fetched+1 {
		t.Errorf("JWKS fetches %d, want %d", got, fetched+1)
	}
	// kid-1 was replaced by the refetch; forged kids are rate-limited: they
	// fail without fetching again.
	for i := range 20 {
		kid := "kid-1"
		if i > 0 {
			kid = "forged-" + string(rune('a'+i))
		}
		_, err := v.Verify(ctx, sign(t, jwt.SigningMethodES256, kid, k1, claims(nil)))
		if !errors.Is(err, auth.ErrSignature) {
			t.Fatalf("%s: %v, want ErrSignature", kid, err)
		}
	}
	if got := srv.fetches.Load(); got != fetched+1 {
		t.Errorf("JWKS fetched %d times for unknown kids, want no more than the rotation's one", got-fetched)
	}
}

func TestVerifyRejects(t *testing.T) {
	srv := newJWKSServer(t)
	ek, ejwk := ecJWK(t, "ec")
	srv.serve(ejwk)
	v := newVerifier(t, auth.Options{JWKSURL: srv.URL, Secret: []byte(secret), Issuer: issuer})
	otherEC, _ := ecJWK(t, "ec")
	cases := []struct {
		name  string
		token string
		want  error
	}{
		{"expired", sign(t, jwt.SigningMethodHS256, "", []byte(secret), claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() })), auth.ErrExpired},
		{"no exp", sign(t, jwt.SigningMethodHS256, "", []byte(secret), claims(func(c jwt.MapClaims) { delete(c, "exp") })), auth.ErrClaims},
		{"not yet valid", sign(t, jwt.SigningMethodHS256, "", []byte(secret), claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() })), auth.ErrExpired},
		{"wrong secret", sign(t, jwt.SigningMethodHS256, "", []byte(secret+"x"), claims(nil)), auth.ErrSignature},
		{"other EC key same kid", sign(t, jwt.SigningMethodES256, "ec", otherEC, claims(nil)), auth.ErrSignature},
		{"anon role", sign(t, jwt.SigningMethodHS256, "", []byte(secret), claims(func(c jwt.MapClaims) { c["role"] = "anon" })), auth.ErrClaims},
		{"service role", sign(t, jwt.SigningMethodHS256, "", []byte(secret), claims(func(c jwt.MapClaims) { c["role"] = "service_role" })), auth.ErrClaims},
		{"wrong audience", sign(t, jwt.SigningMethodHS256, "", []byte(secret), claims(func(c jwt.MapClaims) { c["aud"] = "other" })), auth.ErrClaims},
		{"wrong issuer", sign(t, jwt.SigningMethodES256, "ec", ek, claims(func(c jwt.MapClaims) { c["iss"] = "https://evil/auth/v1" })), auth.ErrClaims},
		{"no subject", sign(t, jwt.SigningMethodHS256, "", []byte(secret), claims(func(c jwt.MapClaims) { delete(c, "sub") })), auth.ErrClaims},
		{"alg none", sign(t, jwt.SigningMethodNone, "", jwt.UnsafeAllowNoneSignatureType, claims(nil)), auth.ErrSignature},
		{"HS384 not allowed", sign(t, jwt.SigningMethodHS384, "", []byte(secret), claims(nil)), auth.ErrSignature},
		{"garbage", "a.b.c", auth.ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Verify(context.Background(), tc.token)
			if !errors.Is(err, tc.want) || c != nil {
				t.Fatalf("got %v (%v), want %v", err, c, tc.want)
			}
			if auth.Reason(err) == "other" {
				t.Errorf("no metric reason for %v", err)
			}
		})
	}
	// Both key kinds verify side by side (a project migrating from the
	// legacy secret to signing keys).
	for _, tok := range []string{
		sign(t, jwt.SigningMethodHS256, "", []byte(secret), claims(nil)),
		sign(t, jwt.SigningMethodES256, "ec", ek, claims(nil)),
	} {
		if _, err := v.Verify(context.Background(), tok); err != nil {
			t.Errorf("valid token refused: %v", err)
		}
	}
}

// TestPublicKeyIsNeverAnHMACSecret signs HS256 with the bytes of the
// public JWK (the classic algorithm confusion attack) against a verifier
// that has only a JWKS.
func TestPublicKeyIsNeverAnHMACSecret(t *testing.T) {
	srv := newJWKSServer(t)
	_, jwk := ecJWK(t, "ec")
	srv.serve(jwk)
	v := newVerifier(t, auth.Options{JWKSURL: srv.URL})
	pub, _ := json.Marshal(jwk)
	tok := sign(t, jwt.SigningMethodHS256, "ec", pub, claims(nil))
	if _, err := v.Verify(context.Background(), tok); !errors.Is(err, auth.ErrSignature) {
		t.Fatalf("got %v, want ErrSignature", err)
	}
}

func TestExpiryFollowsInjectedClock(t *testing.T) {
	var clock atomic.Int64
	clock.Store(now.Unix())
	v := newVerifier(t, auth.Options{Secret: []byte(secret), Leeway: time.Second,
		Now: func() time.Time { return time.Unix(clock.Load(), 0) }})
	tok := sign(t, jwt.SigningMethodHS256, "", []byte(secret), claims(nil))
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	clock.Store(now.Add(2 * time.Hour).Unix())
	if _, err := v.Verify(context.Background(), tok); !errors.Is(err, auth.ErrExpired) {
		t.Fatalf("after expiry: %v", err)
	}
}

// FuzzVerify feeds browser-controlled input to Verify: a whole token, and
// a claims payload the fuzzer chooses but which is then signed with the
// HS256 secret (so the claims checks run on a valid signature). Verify
// must never panic; a token it accepts has a subject, the authenticated
// role, and is not expired; an error wraps a known reason and never
// contains the token or the secret.
func FuzzVerify(f *testing.F) {
	srv := newJWKSServer(f)
	ek, ejwk := ecJWK(f, "ec")
	rk, rjwk := rsaJWK(f, "rsa")
	srv.serve(ejwk, rjwk)
	// UnknownKIDEvery: forged kids fetch the JWKS at most once per worker.
	v := newVerifier(f, auth.Options{JWKSURL: srv.URL, Secret: []byte(secret), Issuer: issuer, UnknownKIDEvery: time.Hour})
	hs := []byte(secret)
	payload := func(mut func(jwt.MapClaims)) []byte {
		b, _ := json.Marshal(claims(mut))
		return b
	}
	valid := payload(nil)
	for _, seed := range []struct {
		token   string
		payload []byte
	}{
		{sign(f, jwt.SigningMethodHS256, "", hs, claims(nil)), valid},
		{sign(f, jwt.SigningMethodES256, "ec", ek, claims(nil)), payload(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Hour).Unix() })},
		{sign(f, jwt.SigningMethodRS256, "rsa", rk, claims(nil)), payload(func(c jwt.MapClaims) { c["role"] = "service_role" })},
		{sign(f, jwt.SigningMethodHS256, "", hs, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() })), payload(func(c jwt.MapClaims) { c["exp"] = 1e300 })},
		{sign(f, jwt.SigningMethodNone, "", jwt.UnsafeAllowNoneSignatureType, claims(nil)), payload(func(c jwt.MapClaims) { c["exp"] = "tomorrow" })},
		{sign(f, jwt.SigningMethodHS384, "", hs, claims(nil)), payload(func(c jwt.MapClaims) { c["sub"] = 42 })},
		{sign(f, jwt.SigningMethodRS256, "ec", rk, claims(nil)), payload(func(c jwt.MapClaims) { delete(c, "sub") })},
		{sign(f, jwt.SigningMethodHS256, "rsa", []byte(rjwk["n"]), claims(nil)), payload(func(c jwt.MapClaims) { c["aud"] = []any{"authenticated", 7} })},
		{"a.b.c", []byte(`{"sub":"x","role":"authenticated","aud":"authenticated","exp":-1}`)},
		{"", []byte("null")},
		{"eyJhbGciOiJIUzI1NiJ9..", []byte(`[]`)},
		{strings.Repeat("x", auth.MaxTokenLen+1), []byte(`{"exp":9223372036854775807}`)},
	} {
		f.Add(seed.token, seed.payload)
	}
	header := b64([]byte(`{"alg":"HS256","typ":"JWT"}`))
	f.Fuzz(func(t *testing.T, token string, payload []byte) {
		signing := header + "." + b64(payload)
		sig, err := jwt.SigningMethodHS256.Sign(signing, hs)
		if err != nil {
			t.Fatal(err)
		}
		for _, tok := range []string{token, signing + "." + b64(sig)} {
			c, err := v.Verify(context.Background(), tok)
			if err != nil {
				if c != nil {
					t.Fatalf("claims %+v with error %v", c, err)
				}
				msg := err.Error()
				if auth.Reason(err) == "other" {
					t.Fatalf("error %q wraps no known reason", msg)
				}
				// A short token can be a substring of a fixed message by
				// chance; no message holds 24 bytes of a JWT.
				if (len(tok) >= 24 && strings.Contains(msg, tok)) || strings.Contains(msg, secret) {
					t.Fatalf("error %q contains the token or the secret", msg)
				}
				continue
			}
			if c.Subject == "" || c.Role != auth.AuthenticatedRole || c.ValidUntil.Before(now) {
				t.Fatalf("accepted %q: subject %q role %q valid until %v (now %v)", tok, c.Subject, c.Role, c.ValidUntil, now)
			}
		}
	})
}
