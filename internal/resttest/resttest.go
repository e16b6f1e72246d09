// Package resttest is what the fuzz targets of the relay's Supabase REST
// clients share: a canned PostgREST answer in memory, a reading of
// PostgREST's row arrays apart from encoding/json's reflection (to check
// the clients' decoding against), and a check that no error shows a
// secret. Tests only.
package resttest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Answer is an http.RoundTripper giving one canned answer in memory (an
// httptest.Server per input would be far too slow to fuzz), or failing as
// a refused connection does. It fails T unless the request carries Token
// as its bearer and APIKey as its apikey, in headers and not in the URL.
type Answer struct {
	T             *testing.T
	Token, APIKey string
	Status        int
	Body          []byte
	Fail          bool
	Asked         bool // RoundTrip was called
}

// RoundTrip implements http.RoundTripper.
func (a *Answer) RoundTrip(req *http.Request) (*http.Response, error) {
	a.Asked = true
	if req.Header.Get("Authorization") != "Bearer "+a.Token || req.Header.Get("apikey") != a.APIKey {
		a.T.Fatalf("headers %v", req.Header)
	}
	if u := req.URL.String(); strings.Contains(u, a.Token) || strings.Contains(u, a.APIKey) {
		a.T.Fatalf("secret in the URL %q", u)
	}
	if a.Fail {
		return nil, errors.New("dial tcp: connection refused")
	}
	return &http.Response{
		StatusCode: a.Status,
		Header:     http.Header{"Content-Type": {"application/json; charset=utf-8"}},
		Body:       io.NopCloser(bytes.NewReader(a.Body)),
		Request:    req,
	}, nil
}

// Field is one key of a row and its value's JSON.
type Field struct {
	Key   string
	Value json.RawMessage
}

// Rows reads the first JSON value of body, cut at limit bytes, as
// json.Decoder does (syntax and nesting), then walks it token by token as
// decoding it into a slice of structs would: null gives nil rows, an
// array one row per element, each the element's fields in order (a null
// element: none). ok is false where that decoding fails on the shape: a
// syntax error, a top-level value neither an array nor null, an element
// neither an object nor null. The fields' own types are the caller's.
func Rows(body []byte, limit int64) (rows [][]Field, ok bool) {
	var raw json.RawMessage
	if json.NewDecoder(io.LimitReader(bytes.NewReader(body), limit)).Decode(&raw) != nil {
		return nil, false
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	// Numbers as json.Number: as float64 a number too large for one is an
	// error, which the walk below would take for a bad token (a fuzzed
	// answer of 300 digits).
	d.UseNumber()
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
	rows = [][]Field{}
	for d.More() {
		tok, _ := d.Token()
		switch tok {
		case nil:
			rows = append(rows, nil)
			continue
		case json.Delim('{'):
		default:
			return nil, false
		}
		var row []Field
		for d.More() {
			k, _ := d.Token()
			var v json.RawMessage
			if err := d.Decode(&v); err != nil {
				panic(err)
			}
			row = append(row, Field{k.(string), v})
		}
		_, _ = d.Token() // '}'
		rows = append(rows, row)
	}
	return rows, true
}

// NoSecret fails t if err's text holds any 8 bytes running of a secret
// that none of the inputs holds.
func NoSecret(t *testing.T, err error, secrets []string, inputs ...string) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, s := range secrets {
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

// APIKeyRefused is what decoding body, cut at limit bytes, into
// struct{ Message string } with json.Unmarshal and finding "api key" in
// the message (any case) gives, worked out token by token: the whole body
// one JSON value; an object (null gives an empty message); the keys that
// match "message" ignoring case each set it from a string, leave it on
// null, and fail the decoding on any other value; other keys ignored.
func APIKeyRefused(body []byte, limit int64) bool {
	if int64(len(body)) > limit {
		body = body[:limit]
	}
	if !json.Valid(body) {
		return false
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	tok, _ := d.Token()
	if tok == nil {
		return false // null: no message
	}
	if tok != json.Delim('{') {
		return false
	}
	msg := ""
	for d.More() {
		k, _ := d.Token()
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			panic(err) // body is valid JSON
		}
		if !strings.EqualFold(k.(string), "message") || string(v) == "null" {
			continue
		}
		if v[0] != '"' {
			return false
		}
		var s string
		if json.Unmarshal(v, &s) != nil {
			panic("a valid JSON string that does not decode")
		}
		msg = s
	}
	return strings.Contains(strings.ToLower(msg), "api key")
}
