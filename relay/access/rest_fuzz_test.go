package access

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Secrets of the fuzz setup: no error text may hold them.
const (
	fuzzToken  = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLXRva2VuLVNFQ1JFVCJ9.c2lnLVRPS0VOLVNFQ1JFVC03ZjNh"
	fuzzAPIKey = "sb_publishable_APIKEY-SECRET-2b8c91"
)

// answer is a RoundTripper giving one canned PostgREST answer in memory
// (an httptest.Server per input would be far too slow to fuzz). It checks
// that the secrets travel as headers, never in the URL.
type answer struct {
	t      *testing.T
	status int
	body   []byte
	fail   bool
	asked  bool // RoundTrip was called
}

func (a *answer) RoundTrip(req *http.Request) (*http.Response, error) {
	a.asked = true
	if req.Header.Get("Authorization") != "Bearer "+fuzzToken || req.Header.Get("apikey") != fuzzAPIKey {
		a.t.Fatalf("headers %v", req.Header)
	}
	if u := req.URL.String(); strings.Contains(u, fuzzToken) || strings.Contains(u, fuzzAPIKey) {
		a.t.Fatalf("secret in the URL %q", u)
	}
	if a.fail {
		return nil, errors.New("dial tcp: connection refused")
	}
	return &http.Response{
		StatusCode: a.status,
		Header:     http.Header{"Content-Type": {"application/json; charset=utf-8"}},
		Body:       io.NopCloser(bytes.NewReader(a.body)),
		Request:    req,
	}, nil
}

// fuzzREST is a REST backend and its answer: status folded into 100..599
// (100 is 200), body, or a failed request.
func fuzzREST(t *testing.T, status uint16, body []byte, fail bool) (*REST, *answer) {
	a := &answer{t: t, status: 100 + int(status)%500, body: body, fail: fail}
	return &REST{BaseURL: "https://proj.supabase.co", APIKey: fuzzAPIKey, Client: &http.Client{Transport: a}}, a
}

// refDevIDs is what decoding the first JSON value of body (cut at
// maxRESTBody) into []struct{DevID string `json:"devid"`} gives, worked out
// apart from encoding/json's reflection: the value is read whole (syntax
// and nesting as json.Decoder reads it), then walked token by token. ok is
// false where the decoding fails: a syntax error, or a type mismatch (a
// top-level value neither an array nor null, an element neither an object
// nor null, a devid neither a string nor null). A null element is a row
// with devid ""; a null devid leaves the row's devid as it was; keys match
// "devid" ignoring case, the last one counting; other keys are ignored.
func refDevIDs(body []byte) (ids []string, ok bool) {
	var raw json.RawMessage
	if json.NewDecoder(io.LimitReader(bytes.NewReader(body), maxRESTBody)).Decode(&raw) != nil {
		return nil, false
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	tok, err := d.Token()
	if err != nil {
		panic(err) // raw is one valid JSON value
	}
	if tok == nil {
		return nil, true
	}
	if tok != json.Delim('[') {
		return nil, false
	}
	ids = []string{}
	for d.More() {
		tok, _ := d.Token()
		switch tok {
		case nil:
			ids = append(ids, "")
			continue
		case json.Delim('{'):
		default:
			return nil, false
		}
		id := ""
		for d.More() {
			k, _ := d.Token()
			var v json.RawMessage
			if err := d.Decode(&v); err != nil {
				panic(err)
			}
			if !strings.EqualFold(k.(string), "devid") || string(v) == "null" {
				continue
			}
			if v[0] != '"' {
				return nil, false
			}
			if err := json.Unmarshal(v, &id); err != nil {
				panic(err)
			}
		}
		_, _ = d.Token() // '}'
		ids = append(ids, id)
	}
	return ids, true
}

// restFuzzSeeds are PostgREST answers and lookalikes.
var restFuzzSeeds = []string{
	`[{"devid":"ABC123"}]`,
	`[]`,
	`[{"devid":"abc123"}]`,
	`[{"devid":"OTHER"},{"devid":"ABC123"}]`,
	`[{"devid":"ABC123","name":"Kitchen","last_seen_at":"2026-11-27T12:00:00+00:00"}]`,
	`[{"DevID":"ABC123"}]`,
	`[{"devid":"ABC123","devid":"X"}]`,
	`[{"devid":null}]`,
	`[null]`,
	`[{"devid":123}]`,
	`[{"devid":["ABC123"]}]`,
	`["ABC123"]`,
	`{"devid":"ABC123"}`,
	`null`,
	`[{"devid":"ABC\u0031\u00323"}]`,
	`[{"devid":"ABC123"}] trailing`,
	`[{"devid":"ABC123"`,
	``,
	`{"code":"42501","details":null,"hint":null,"message":"permission denied for table devices"}`,
	`{"code":"PGRST301","details":null,"hint":null,"message":"JWT expired"}`,
	`{"message":"Invalid API key","hint":"Double check your Supabase ` + "`anon`" + ` or ` + "`service_role`" + ` API key."}`,
	"\xff\xfe[",
}

// noSecret fails t if err's text holds any 8 bytes running of the token or
// the API key that the inputs do not hold.
func noSecret(t *testing.T, err error, inputs ...string) {
	if err == nil {
		return
	}
	msg := err.Error()
	for _, s := range []string{fuzzToken, fuzzAPIKey} {
		for i := 0; i+8 <= len(s); i++ {
			w := s[i : i+8]
			if !strings.Contains(msg, w) {
				continue
			}
			in := false
			for _, i := range inputs {
				in = in || strings.Contains(i, w)
			}
			if !in {
				t.Fatalf("error %q holds %q of a secret", msg, w)
			}
		}
	}
}

// FuzzRESTCheck feeds Check arbitrary PostgREST answers (status, body, or
// a failed request) for an arbitrary device: it must never panic; it
// returns nil only when the answer is a 200 whose body is a JSON array
// holding a row whose devid equals the device exactly (refDevIDs), ErrDenied
// itself for a 200 with no such row (or null); a body that does not decode,
// a failed request and any other status wrap ErrUnavailable, but a 401
// wraps ErrTokenRefused; and no error text holds the user's token or the
// API key.
func FuzzRESTCheck(f *testing.F) {
	for _, s := range restFuzzSeeds {
		f.Add(uint16(100), []byte(s), "ABC123", false)
	}
	f.Add(uint16(100), []byte(`[{"devid":""}]`), "", false)
	f.Add(uint16(100), []byte(`[]`), "a&b=c#d", false)
	f.Add(uint16(301), []byte(`{"message":"JWT expired"}`), "ABC123", false)
	f.Add(uint16(303), []byte(`{"code":"42501","message":"permission denied for table devices"}`), "ABC123", false)
	f.Add(uint16(403), []byte(`<html>502 Bad Gateway</html>`), "ABC123", false)
	f.Add(uint16(100), []byte{}, "ABC123", true)
	f.Fuzz(func(t *testing.T, status uint16, body []byte, deviceID string, fail bool) {
		r, a := fuzzREST(t, status, body, fail)
		err := r.Check(context.Background(), nil, fuzzToken, deviceID)
		noSecret(t, err, string(body), deviceID)
		switch s := a.status; {
		case !a.asked:
			t.Fatalf("device %q: no request made (%v)", deviceID, err) // the ID is query-escaped
		case fail:
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("failed request: %v", err)
			}
			return
		case s == http.StatusUnauthorized:
			if !errors.Is(err, ErrTokenRefused) || errors.Is(err, ErrUnavailable) {
				t.Fatalf("status 401: %v", err)
			}
			return
		case s != http.StatusOK:
			if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrTokenRefused) || errors.Is(err, ErrDenied) {
				t.Fatalf("status %d: %v", s, err)
			}
			return
		}
		ids, ok := refDevIDs(body)
		if !ok {
			if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrDenied) {
				t.Fatalf("body %q: %v, want unavailable", body, err)
			}
			return
		}
		var want error = ErrDenied
		for _, id := range ids {
			if id == deviceID {
				want = nil
			}
		}
		if err != want {
			t.Fatalf("body %q (rows %q), device %q: %v, want %v", body, ids, deviceID, err, want)
		}
	})
}
