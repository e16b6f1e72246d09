package fakepostgrest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// roles PostgREST may switch to here; anything else is refused rather
// than letting a test JWT name a superuser.
var roles = map[string]bool{"anon": true, "authenticated": true, "service_role": true}

func unauthorized(code, msg string) *apiError {
	return &apiError{status: http.StatusUnauthorized, Code: code, Message: msg}
}

// authenticate returns the role and the claims JSON for a request, as
// Supabase's gateway (apikey) and PostgREST (bearer JWT) decide them.
func (s *Server) authenticate(h http.Header) (string, []byte, *apiError) {
	apikey := h.Get("apikey")
	if apikey == "" {
		return "", nil, unauthorized("401", "No API key found in request")
	}
	var keyClaims jwt.MapClaims
	switch {
	case s.opts.SecretKey != "" && apikey == s.opts.SecretKey:
		keyClaims = jwt.MapClaims{"role": "service_role"}
	case s.opts.PublishableKey != "" && apikey == s.opts.PublishableKey:
		keyClaims = jwt.MapClaims{"role": "anon"}
	default:
		c, err := s.verify(apikey)
		if err != nil {
			return "", nil, unauthorized("401", "Invalid API key")
		}
		keyClaims = c
	}
	claims := keyClaims
	if auth := h.Get("Authorization"); auth != "" {
		tok, ok := strings.CutPrefix(auth, "Bearer ")
		if !ok {
			return "", nil, unauthorized("PGRST301", "Expected a Bearer token")
		}
		c, err := s.verify(tok)
		if err != nil {
			return "", nil, unauthorized("PGRST301", "JWT invalid: "+err.Error())
		}
		claims = c
	}
	role, _ := claims["role"].(string)
	if role == "" {
		role = "anon"
	}
	if !roles[role] {
		return "", nil, unauthorized("PGRST301", "JWT role not allowed here")
	}
	b, _ := json.Marshal(claims)
	return role, b, nil
}

func (s *Server) verify(tok string) (jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return s.opts.JWTSecret, nil },
		jwt.WithValidMethods([]string{"HS256"}))
	if err != nil {
		return nil, err
	}
	return claims, nil
}

// SignJWT signs claims with HS256 and secret, for tests that need a user or
// service_role token the server accepts.
func SignJWT(t testing.TB, secret []byte, claims map[string]any) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(claims)).SignedString(secret)
	if err != nil {
		t.Fatalf("fakepostgrest: sign: %v", err)
	}
	return s
}
