package devset_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/devset"
)

// roundTrip is an http.RoundTripper in memory: the REST code runs whole
// (request, status, read, decode, paging) without a socket per input.
type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func answer(r *http.Request, status int, body []byte) *http.Response {
	return &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: r}
}

// FuzzRESTList feeds the REST lister's first page arbitrary answers of
// PostgREST (SUPABASE_URL mode; a proxy in front of it may answer
// anything); the next page is empty. It must not panic. It returns a list
// only for a JSON array, and then exactly the rows' devid values in order
// (kept as sent: the table's check allows only valid IDs, and Has is only
// asked valid ones), the next page asked after the last of them. Anything
// else (null, an object, a row of the wrong type, truncated JSON) is an
// error with no list: an empty list taken as truth would empty the
// credentialed set, letting plain CoAP speak for every keyed device.
// Errors never show the service key. A page holds at most 1 MiB, far
// fewer rows than MaxIDs: that bound is the pager's (TestMoreThanMaxIDs…).
func FuzzRESTList(f *testing.F) {
	for _, s := range []string{
		`[{"devid":"ABC123"},{"devid":"dev-b_2"}]`,
		`[{"devid":"ABC123"}]`,
		`[{"devid":"K1"},{"devid":"K2"},{"devid":"K3"},{"devid":"K4"}]`,
		"[\n  {\"devid\": \"K1\"},\n  {\"devid\": \"K2\"}\n]\n",
		`[]`,
		` [ ] `,
		`null`,
		` null`,
		`{}`,
		`{"code":"PGRST205","message":"Could not find the table 'public.devices' in the schema cache","details":null,"hint":null}`,
		`[{"devid":"ABC123"},{"devid":"DEF`, // truncated
		`[{"devid":"ABC123"},`,
		`[{"devid":null}]`,
		`[{"devid":123}]`,
		`[{"devid":1e999}]`,
		`[null,{"devid":"A"}]`,
		`[1]`,
		`[{"DEVID":"upper"},{"devid":"a","devid":"b"}]`,
		`[{"devid":"bad id\n"},{"devid":"` + strings.Repeat("x", 65) + `"}]`,
		`[{"devid":"\u00e9\ud800"}]`,
		`"ABC123"`,
		`<html>502 Bad Gateway</html>`,
		``,
	} {
		f.Add([]byte(s))
	}
	const key = "sb_secret_devsetfuzz0123456789"
	var (
		body  []byte
		calls int
		after string // the second request's devid filter
	)
	client := &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		calls++
		if calls == 1 {
			return answer(r, http.StatusOK, body), nil
		}
		after = r.URL.Query().Get("devid")
		return answer(r, http.StatusOK, []byte(`[]`)), nil
	})}
	list := devset.REST("http://supabase.invalid", key, client, devset.Credentialed)
	f.Fuzz(func(t *testing.T, b []byte) {
		body, calls, after = b, 0, ""
		ids, err := list(context.Background())
		if err != nil {
			if ids != nil {
				t.Fatalf("%q: %d IDs with the error %v", b, len(ids), err)
			}
			if strings.Contains(err.Error(), key) && !bytes.Contains(b, []byte(key)) {
				t.Fatalf("%q: the error shows the service key: %v", b, err)
			}
			return
		}
		if !json.Valid(b) || bytes.TrimLeft(b, " \t\r\n")[0] != '[' {
			t.Fatalf("%q is not a JSON array, yet listed %q", b, ids)
		}
		var rows []struct {
			DevID string `json:"devid"`
		}
		if err := json.Unmarshal(b, &rows); err != nil {
			t.Fatalf("%q: listed %q, but encoding/json refuses it: %v", b, ids, err)
		}
		if len(ids) != len(rows) {
			t.Fatalf("%q: %d IDs, want the %d rows'", b, len(ids), len(rows))
		}
		for i, r := range rows {
			if ids[i] != r.DevID {
				t.Fatalf("%q: ID %d is %q, want %q", b, i, ids[i], r.DevID)
			}
		}
		switch {
		case len(rows) == 0 && calls != 1:
			t.Fatalf("%q: %d requests for an empty first page, want 1", b, calls)
		case len(rows) > 0 && calls != 2:
			t.Fatalf("%q: %d requests, want 2 (the second empty)", b, calls)
		case len(rows) > 0 && ids[len(ids)-1] != "" && after != "gt."+ids[len(ids)-1]:
			// (after a last devid "" the next page starts over: only a
			// non-PostgREST answer has one)
			t.Fatalf("%q: the next page asked devid=%q, want gt.%s", b, after, ids[len(ids)-1])
		}
	})
}
