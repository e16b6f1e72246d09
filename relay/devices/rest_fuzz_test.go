package devices

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/resttest"
	"github.com/nbiot-live/nbiot-live/relay/access"
)

// Secrets of the fuzz setup: no error text may hold them.
const (
	fuzzToken  = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLXRva2VuLVNFQ1JFVCJ9.c2lnLVRPS0VOLVNFQ1JFVC03ZjNh"
	fuzzAPIKey = "sb_publishable_APIKEY-SECRET-2b8c91"
)

// refDevices is what decoding the first JSON value of body (cut at
// maxRESTBody) into []Device gives, worked out apart from encoding/json's
// reflection (resttest.Rows): ok is false where the decoding fails, on the
// rows' shape, a devid or name neither a string nor null, a last_seen_at
// neither null nor what (*time.Time).UnmarshalJSON takes (a quoted RFC 3339
// time, escapes not undone). A null element is a zero Device; a null devid
// leaves it as it was, a null name or last_seen_at makes it nil; keys match
// ignoring case, the last one counting; other keys are ignored.
func refDevices(body []byte) (out []Device, ok bool) {
	rows, ok := resttest.Rows(body, maxRESTBody)
	if !ok || rows == nil {
		return nil, ok
	}
	out = []Device{}
	for _, row := range rows {
		var dev Device
		for _, f := range row {
			v := f.Value
			null := string(v) == "null"
			switch key := f.Key; {
			case strings.EqualFold(key, "devid"):
				if null {
					continue
				}
				if v[0] != '"' || json.Unmarshal(v, &dev.DevID) != nil {
					return nil, false
				}
			case strings.EqualFold(key, "name"):
				dev.Name = nil
				if null {
					continue
				}
				var s string
				if v[0] != '"' || json.Unmarshal(v, &s) != nil {
					return nil, false
				}
				dev.Name = &s
			case strings.EqualFold(key, "last_seen_at"):
				dev.LastSeenAt = nil
				if null {
					continue
				}
				var ts time.Time
				if ts.UnmarshalJSON(v) != nil {
					return nil, false
				}
				dev.LastSeenAt = &ts
			}
		}
		out = append(out, dev)
	}
	return out, true
}

func sameDevice(a, b Device) bool {
	return a.DevID == b.DevID &&
		(a.Name == nil) == (b.Name == nil) && (a.Name == nil || *a.Name == *b.Name) &&
		(a.LastSeenAt == nil) == (b.LastSeenAt == nil) &&
		(a.LastSeenAt == nil || a.LastSeenAt.Equal(*b.LastSeenAt) && a.LastSeenAt.Format(time.RFC3339Nano) == b.LastSeenAt.Format(time.RFC3339Nano))
}

// FuzzRESTList feeds List arbitrary PostgREST answers (status, body, or a
// failed request): it must never panic; a 200 whose body decodes
// (refDevices) gives exactly its devices, in order, and no error; a body
// that does not decode is an error ("devices: rest body: …") that does not
// wrap access.ErrTokenRefused, so the handler answers 503; a 401 wraps
// access.ErrTokenRefused (the handler's 401), unless its body is the
// gateway refusing the API key (resttest.APIKeyRefused); any other status and a failed
// request are errors that do not; no error text holds the user's token or
// the API key. The package has no unavailable error of its own: any error
// but ErrTokenRefused is the handler's "unavailable".
func FuzzRESTList(f *testing.F) {
	for _, s := range []string{
		`[{"devid":"ABC123","name":"Kitchen","last_seen_at":"2026-11-27T12:00:00.123456+00:00"},{"devid":"DEF456","name":null,"last_seen_at":null}]`,
		`[]`,
		`null`,
		`[null]`,
		`[{"devid":"ABC123"}]`,
		`[{"DEVID":"ABC123","Name":"x","LAST_SEEN_AT":"2026-11-27T12:00:00Z"}]`,
		`[{"devid":"A","devid":null,"name":"n","name":null}]`,
		`[{"devid":"A","last_seen_at":"2026-11-27 12:00:00+00"}]`,
		`[{"devid":"A","last_seen_at":"\u0032026-11-27T12:00:00Z"}]`,
		`[{"devid":"A","last_seen_at":1764244800}]`,
		`[{"devid":"A","last_seen_at":{}}]`,
		`[{"devid":7}]`,
		`[{"devid":"A","name":["x"]}]`,
		`["ABC123"]`,
		`{"devid":"ABC123"}`,
		`[{"devid":"A"}] trailing`,
		`[{"devid":"A"`,
		``,
		`{"code":"42501","details":null,"hint":null,"message":"permission denied for table devices"}`,
		`{"code":"PGRST301","details":null,"hint":null,"message":"JWT expired"}`,
		"\xff\xfe[",
	} {
		f.Add(uint16(100), []byte(s), false)
	}
	f.Add(uint16(301), []byte(`{"message":"JWT expired"}`), false)
	f.Add(uint16(303), []byte(`{"code":"42501"}`), false)
	f.Add(uint16(100), []byte{}, true)
	f.Fuzz(func(t *testing.T, status uint16, body []byte, fail bool) {
		a := &resttest.Answer{T: t, Token: fuzzToken, APIKey: fuzzAPIKey, Status: 100 + int(status)%500, Body: body, Fail: fail}
		r := &REST{BaseURL: "https://proj.supabase.co", APIKey: fuzzAPIKey, Client: &http.Client{Transport: a}}
		got, err := r.List(context.Background(), nil, fuzzToken, Limit)
		resttest.NoSecret(t, err, []string{fuzzToken, fuzzAPIKey}, string(body))
		if a.Fail || a.Status != http.StatusOK {
			refused := !a.Fail && a.Status == http.StatusUnauthorized && !resttest.APIKeyRefused(body, maxRESTBody)
			if err == nil || got != nil || errors.Is(err, access.ErrTokenRefused) != refused {
				t.Fatalf("status %d, failed %v: %v, %v", a.Status, a.Fail, got, err)
			}
			return
		}
		want, ok := refDevices(body)
		if !ok {
			if err == nil || got != nil || errors.Is(err, access.ErrTokenRefused) || !strings.HasPrefix(err.Error(), "devices: rest body: ") {
				t.Fatalf("body %q: %v, %v; want a body error", body, got, err)
			}
			return
		}
		if err != nil || len(got) != len(want) || (got == nil) != (want == nil) {
			t.Fatalf("body %q: %v, %v; want %v", body, got, err, want)
		}
		for i := range want {
			if !sameDevice(got[i], want[i]) {
				t.Fatalf("body %q: device %d is %+v, want %+v", body, i, got[i], want[i])
			}
		}
	})
}
