package downlink_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
)

// firstPage is an http.RoundTripper in memory: the first request of a
// read gets body, every later one an empty page (with repeat, body again,
// as an answer that ignores the filters would: up to 10 requests, then an
// error). The REST store runs whole (request, read, decode, paging)
// without a socket per input.
type firstPage struct {
	body     []byte
	repeat   bool
	requests int
	next     []string // the id filters of the second request
}

func (p *firstPage) RoundTrip(r *http.Request) (*http.Response, error) {
	p.requests++
	body := []byte(`[]`)
	switch {
	case p.repeat && p.requests > 10:
		return nil, errors.New("the first page was asked for 10 times")
	case p.requests == 1 || p.repeat:
		body = p.body
	}
	if p.requests == 2 {
		p.next = r.URL.Query()["id"]
	}
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: r,
		Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}, nil
}

// downlinkRow is a row of device_downlinks as PostgREST sends it.
type downlinkRow struct {
	ID           int64           `json:"id"`
	DevID        string          `json:"devid"`
	Config       json.RawMessage `json:"config"`
	SentAt       *string         `json:"sent_at"`
	AppliedAt    *string         `json:"applied_at"`
	SupersededAt *string         `json:"superseded_at"`
}

// FuzzRESTRows feeds the REST store's first page of device_downlinks
// arbitrary answers of PostgREST (SUPABASE_URL mode; a proxy in front of
// it may answer anything); the next page is empty. Neither Since nor
// Newest may panic. For a JSON array of rows, Since hands on each row
// with its id, devid and config (the config's very bytes in the body, for
// FuzzConfigFromJSON's decoder) as sent, Sent and Done from the
// timestamps, then asks for the page below the last id; Newest is the
// first row's id (0 for []). Anything else (null, an object, truncated
// JSON, a wrong type, an id beyond int64) is an error, with no row handed
// on; so is a page whose ids do not go down from one row to the next, or
// are 0 or less (the pager would read the first page again). No error
// shows the service key.
func FuzzRESTRows(f *testing.F) {
	for _, s := range []string{
		`[{"id":42,"devid":"ABC123","config":{"interval":600,"gnss":true},"sent_at":null,"applied_at":null,"superseded_at":null}]`,
		`[{"id":42,"devid":"ABC123","config":{"interval":600},"sent_at":"2026-12-01T10:00:00.123456+00:00","applied_at":null,"superseded_at":null},` +
			`{"id":41,"devid":"ABC123","config":{"interval":60},"sent_at":"2026-11-30T10:00:00+00:00","applied_at":null,"superseded_at":"2026-12-01T10:00:00+00:00"},` +
			`{"id":7,"devid":"DEF456","config":{},"sent_at":null,"applied_at":"2026-11-01T00:00:00+00:00","superseded_at":null}]`,
		`[{"id":3,"devid":"K1","config":{"a":[1,2,{"b":"\u00e9"}]},"sent_at":null}]`, // the view's columns
		`[{"id":9}]`, // Newest's select=id
		"[\n  {\"id\": 5, \"devid\": \"K\", \"config\": { \"x\" : 1 } }\n]\n",
		`[]`,
		`null`,
		` null `,
		`{}`,
		`{"code":"PGRST205","message":"Could not find the table 'public.device_downlinks_pending' in the schema cache","details":null,"hint":null}`,
		`[{"id":42,"devid":"ABC123","config":{"interval":6`, // truncated
		`[{"id":42,"devid":"ABC123","config":{}},`,
		`[{"id":null,"devid":null,"config":null,"sent_at":null}]`,
		`[{"id":"42","devid":"ABC123","config":{}}]`,
		`[{"id":42,"devid":123,"config":{}}]`,
		`[{"id":42,"devid":"A","config":{},"sent_at":5}]`,
		`[{"id":9223372036854775807,"devid":"A","config":"text"}]`,
		`[{"id":9223372036854775808,"devid":"A","config":{}}]`,
		`[{"id":-1,"devid":"A","config":[]}]`,
		`[{"id":1e3,"devid":"A","config":{}}]`,
		`[{"id":1,"devid":"A","config":{"x":1e999}}]`,
		`[null,{"id":1}]`,
		`[1]`,
		`<html>502 Bad Gateway</html>`,
		``,
	} {
		f.Add([]byte(s))
	}
	const key = "sb_secret_downlinkfuzz0123456789"
	p := &firstPage{}
	r := &downlink.REST{BaseURL: "http://supabase.invalid", ServiceKey: key, Client: &http.Client{Transport: p}}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, body []byte) {
		isArray := json.Valid(body) && bytes.TrimLeft(body, " \t\r\n")[0] == '['
		var want []downlinkRow
		decoded := json.Unmarshal(body, &want) == nil
		descending := true
		for i, w := range want {
			if w.ID <= 0 || (i > 0 && w.ID >= want[i-1].ID) {
				descending = false
			}
		}

		*p = firstPage{body: body}
		var got []downlink.Row
		err := r.Since(ctx, 0, func(x downlink.Row) { got = append(got, x) })
		if err != nil {
			if len(got) != 0 {
				t.Fatalf("%q: %d rows handed on, then %v", body, len(got), err)
			}
			checkKey(t, body, err, key)
		} else {
			if !isArray || !decoded || !descending {
				t.Fatalf("%q is not a JSON array of rows with descending ids, yet Since read %d", body, len(got))
			}
			if len(got) != len(want) {
				t.Fatalf("%q: Since handed on %d rows, want %d", body, len(got), len(want))
			}
			for i, w := range want {
				g := got[i]
				if g.ID != w.ID || g.DeviceID != w.DevID || !bytes.Equal(g.Config, w.Config) ||
					g.Sent != (w.SentAt != nil) || g.Done != (w.AppliedAt != nil || w.SupersededAt != nil) {
					t.Fatalf("%q: row %d is %+v, want %+v", body, i, g, w)
				}
				if len(g.Config) > 0 && (!json.Valid(g.Config) || !bytes.Contains(body, g.Config)) {
					t.Fatalf("%q: row %d's config %q is not a JSON value of the body", body, i, g.Config)
				}
			}
			switch last := int64(0); {
			case len(want) == 0 && p.requests != 1:
				t.Fatalf("%q: %d requests for an empty first page, want 1", body, p.requests)
			case len(want) > 0 && p.requests != 2:
				t.Fatalf("%q: %d requests, want 2 (the second empty)", body, p.requests)
			case len(want) > 0:
				if last = want[len(want)-1].ID; last > 0 && strings.Join(p.next, "&") != "lt."+strconv.FormatInt(last, 10) {
					t.Fatalf("%q: the next page asked id=%q, want lt.%d", body, p.next, last)
				}
			}
		}

		*p = firstPage{body: body}
		newest, err := r.Newest(ctx)
		switch {
		case err != nil:
			checkKey(t, body, err, key)
			if newest != 0 {
				t.Fatalf("%q: Newest %d with the error %v", body, newest, err)
			}
		case !isArray || !decoded:
			t.Fatalf("%q is not a JSON array of rows, yet Newest read %d", body, newest)
		case len(want) == 0 && newest != 0, len(want) > 0 && newest != want[0].ID:
			t.Fatalf("%q: Newest %d, want the first row's id", body, newest)
		}
	})
}

// An answer that ignores the id filters (a proxy's, not PostgREST's) made
// Since read its first page again and again, handing on the same rows
// each time, forever. The page below must have ids below the last.
func TestRESTPagesGoDown(t *testing.T) {
	for _, body := range []string{
		`[{"id":2,"devid":"A","config":{}},{"id":1,"devid":"B","config":{}}]`,
		`[{"id":1,"devid":"A","config":{}},{"id":2,"devid":"B","config":{}}]`,
		`[{"id":0,"devid":"A","config":{}}]`,
	} {
		p := &firstPage{body: []byte(body), repeat: true}
		r := &downlink.REST{BaseURL: "http://supabase.invalid", ServiceKey: "k", Client: &http.Client{Transport: p}}
		n := 0
		err := r.Since(context.Background(), 0, func(downlink.Row) { n++ })
		if err == nil || !strings.Contains(err.Error(), "out of order") {
			t.Fatalf("%s every time: %v after %d requests, want an out-of-order error", body, err, p.requests)
		}
		if n > 2 || p.requests > 2 {
			t.Fatalf("%s every time: %d rows handed on in %d requests, want the first page's at most, in 2 at most", body, n, p.requests)
		}
	}
}

func checkKey(t *testing.T, body []byte, err error, key string) {
	t.Helper()
	if strings.Contains(err.Error(), key) && !bytes.Contains(body, []byte(key)) {
		t.Fatalf("%q: the error shows the service key: %v", body, err)
	}
}
