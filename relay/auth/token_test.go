package auth_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/relay/auth"
)

const jwtLike = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"

func TestFromRequest(t *testing.T) {
	cases := []struct {
		name      string
		header    http.Header
		query     string
		token     string
		source    string
		err       error
		offersSub bool
	}{
		{"bearer header", http.Header{"Authorization": {"Bearer abc"}}, "", "abc", auth.SourceHeader, nil, false},
		{"bearer scheme any case", http.Header{"Authorization": {"bEaReR abc"}}, "", "abc", auth.SourceHeader, nil, false},
		{"basic auth is no token", http.Header{"Authorization": {"Basic dXNlcg=="}}, "", "", auth.SourceHeader, auth.ErrNoToken, false},
		{"empty bearer", http.Header{"Authorization": {"Bearer  "}}, "", "", auth.SourceHeader, auth.ErrNoToken, false},
		{"prefixed subprotocol", http.Header{"Sec-Websocket-Protocol": {"nbiot-live, access_token." + jwtLike}}, "", jwtLike, auth.SourceSubprotocol, nil, true},
		{"bare jwt subprotocol", http.Header{"Sec-Websocket-Protocol": {"nbiot-live", jwtLike}}, "", jwtLike, auth.SourceSubprotocol, nil, true},
		{"prefixed wins over bare", http.Header{"Sec-Websocket-Protocol": {jwtLike + ", access_token.eyJ.b.c, nbiot-live"}}, "", "eyJ.b.c", auth.SourceSubprotocol, nil, true},
		{"other protocols only", http.Header{"Sec-Websocket-Protocol": {"chat, nbiot-live"}}, "", "", "", auth.ErrNoToken, true},
		{"query", nil, "access_token=q1", "q1", auth.SourceQuery, nil, false},
		{"header wins over query", http.Header{"Authorization": {"Bearer h"}}, "access_token=q", "h", auth.SourceHeader, nil, false},
		{"subprotocol wins over query", http.Header{"Sec-Websocket-Protocol": {"access_token.p"}}, "access_token=q", "p", auth.SourceSubprotocol, nil, false},
		{"nothing", nil, "deviceId=x", "", "", auth.ErrNoToken, false},
		{"too large", http.Header{"Authorization": {"Bearer " + strings.Repeat("a", auth.MaxTokenLen+1)}}, "", "", auth.SourceHeader, auth.ErrTokenTooLarge, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/device-logs?"+tc.query, nil)
			for k, v := range tc.header {
				r.Header[k] = v
			}
			tok, src, err := auth.FromRequest(r)
			if tok != tc.token || src != tc.source || !errors.Is(err, tc.err) {
				t.Errorf("got (%q, %q, %v), want (%q, %q, %v)", tok, src, err, tc.token, tc.source, tc.err)
			}
			if got := auth.OffersSubprotocol(r); got != tc.offersSub {
				t.Errorf("OffersSubprotocol %v, want %v", got, tc.offersSub)
			}
		})
	}
}

// FuzzFromRequest feeds arbitrary header and query values to the token
// extraction: it must never panic, and a token it returns must come from
// the input and respect the size limit.
func FuzzFromRequest(f *testing.F) {
	f.Add("Bearer "+jwtLike, "", "")
	f.Add("", "nbiot-live, access_token."+jwtLike, "")
	f.Add("", "nbiot-live,"+jwtLike, "deviceId=A")
	f.Add("", "", "access_token="+jwtLike+"&deviceId=A")
	f.Add("bearer", ",,, ,access_token.", "access_token=%zz")
	f.Fuzz(func(t *testing.T, authz, protocols, query string) {
		r := httptest.NewRequest("GET", "/device-logs", nil)
		r.URL.RawQuery = query
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		if protocols != "" {
			r.Header.Set("Sec-WebSocket-Protocol", protocols)
		}
		tok, _, err := auth.FromRequest(r)
		if err != nil {
			if tok != "" {
				t.Fatalf("token %q with error %v", tok, err)
			}
			return
		}
		if tok == "" || len(tok) > auth.MaxTokenLen {
			t.Fatalf("token %q", tok)
		}
		if !strings.Contains(authz, tok) && !strings.Contains(protocols, tok) && !strings.Contains(r.URL.Query().Get("access_token"), tok) {
			t.Fatalf("token %q not from the input", tok)
		}
		_ = auth.OffersSubprotocol(r)
	})
}

// FuzzFromProtocols checks the subprotocol parser alone: no panic, and a
// token is always a trimmed part of one offered entry.
func FuzzFromProtocols(f *testing.F) {
	f.Add("nbiot-live, access_token." + jwtLike)
	f.Add(jwtLike)
	f.Add("access_token.")
	f.Add(" , eyJ.. ,")
	f.Fuzz(func(t *testing.T, v string) {
		tok, ok := auth.FromProtocols([]string{v})
		if ok != (tok != "") {
			t.Fatalf("ok %v with token %q", ok, tok)
		}
		if ok && (!strings.Contains(v, tok) || strings.Contains(tok, ",") || strings.TrimSpace(tok) != tok) {
			t.Fatalf("token %q from %q", tok, v)
		}
	})
}
