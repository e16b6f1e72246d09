package access

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/internal/resttest"
)

// Secrets of the fuzz setup: no error text may hold them.
const (
	fuzzToken  = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLXRva2VuLVNFQ1JFVCJ9.c2lnLVRPS0VOLVNFQ1JFVC03ZjNh"
	fuzzAPIKey = "sb_publishable_APIKEY-SECRET-2b8c91"
)

// fuzzREST is a REST backend and its canned answer: status folded into
// 100..599 (100 is 200), body, or a failed request.
func fuzzREST(t *testing.T, status uint16, body []byte, fail bool) (*REST, *resttest.Answer) {
	a := &resttest.Answer{T: t, Token: fuzzToken, APIKey: fuzzAPIKey, Status: 100 + int(status)%500, Body: body, Fail: fail}
	return &REST{BaseURL: "https://proj.supabase.co", APIKey: fuzzAPIKey, Client: &http.Client{Transport: a}}, a
}

// refDevIDs is what decoding the first JSON value of body (cut at
// maxRESTBody) into []struct{DevID string `json:"devid"`} gives, worked out
// apart from encoding/json's reflection (resttest.Rows): ok is false where
// the decoding fails, on the rows' shape or a devid neither a string nor
// null. A null element is a row with devid ""; a null devid leaves the
// row's devid as it was; keys match "devid" ignoring case, the last one
// counting; other keys are ignored.
func refDevIDs(body []byte) (ids []string, ok bool) {
	rows, ok := resttest.Rows(body, maxRESTBody)
	if !ok || rows == nil {
		return nil, ok
	}
	ids = []string{}
	for _, row := range rows {
		id := ""
		for _, f := range row {
			if !strings.EqualFold(f.Key, "devid") || string(f.Value) == "null" {
				continue
			}
			if f.Value[0] != '"' {
				return nil, false
			}
			if err := json.Unmarshal(f.Value, &id); err != nil {
				panic(err)
			}
		}
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
	t.Helper()
	resttest.NoSecret(t, err, []string{fuzzToken, fuzzAPIKey}, inputs...)
}

// FuzzRESTCheck feeds Check arbitrary PostgREST answers (status, body, or
// a failed request) for an arbitrary device: it must never panic; it
// returns nil only when the answer is a 200 whose body is a JSON array
// holding a row whose devid equals the device exactly (refDevIDs), ErrDenied
// itself for a 200 with no such row (or null); a body that does not decode,
// a failed request and any other status wrap ErrUnavailable, but a 401
// wraps ErrTokenRefused, unless its body is the gateway refusing the API
// key (resttest.APIKeyRefused: unavailable); and no error text holds the
// user's token or the API key.
func FuzzRESTCheck(f *testing.F) {
	for _, s := range restFuzzSeeds {
		f.Add(uint16(100), []byte(s), "ABC123", false)
	}
	f.Add(uint16(100), []byte(`[{"devid":""}]`), "", false)
	f.Add(uint16(100), []byte(`[]`), "a&b=c#d", false)
	f.Add(uint16(301), []byte(`{"message":"JWT expired"}`), "ABC123", false)
	f.Add(uint16(301), []byte(`{"message":"Invalid API key","hint":"Double check your Supabase anon or service_role API key."}`), "ABC123", false)
	f.Add(uint16(303), []byte(`{"code":"42501","message":"permission denied for table devices"}`), "ABC123", false)
	f.Add(uint16(403), []byte(`<html>502 Bad Gateway</html>`), "ABC123", false)
	f.Add(uint16(100), []byte{}, "ABC123", true)
	f.Fuzz(func(t *testing.T, status uint16, body []byte, deviceID string, fail bool) {
		r, a := fuzzREST(t, status, body, fail)
		err := r.Check(context.Background(), nil, fuzzToken, deviceID)
		noSecret(t, err, string(body), deviceID)
		switch s := a.Status; {
		case !a.Asked:
			t.Fatalf("device %q: no request made (%v)", deviceID, err) // the ID is query-escaped
		case fail:
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("failed request: %v", err)
			}
			return
		case s == http.StatusUnauthorized && resttest.APIKeyRefused(body, maxRESTBody):
			if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrTokenRefused) || !strings.Contains(err.Error(), "SUPABASE_ANON_KEY") {
				t.Fatalf("status 401, API key refused: %v", err)
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
