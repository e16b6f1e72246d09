package access

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/internal/resttest"
)

// FuzzRESTVisible feeds Visible arbitrary PostgREST answers for an
// arbitrary comma-separated list of devices (a 401 as FuzzRESTCheck says):
// it must never panic; on a 200
// whose body decodes (refDevIDs) the map has exactly the asked devices as
// keys, true just for those among the body's rows (rows of devices not
// asked change nothing); a body that does not decode, a failed request and
// any other status give no map and an error wrapping ErrUnavailable (a 401
// wrapping ErrTokenRefused), never ErrDenied; and no error text holds the
// user's token or the API key.
func FuzzRESTVisible(f *testing.F) {
	for _, s := range restFuzzSeeds {
		f.Add(uint16(100), []byte(s), "ABC123,OTHER", false)
	}
	f.Add(uint16(100), []byte(`[{"devid":"B"},{"devid":"C"},{"devid":"A"}]`), "A,B", false)
	f.Add(uint16(100), []byte(`[{"devid":"A,B"}]`), "A,B", false)
	f.Add(uint16(100), []byte(`[{"devid":"a"}]`), "A,A,a", false)
	f.Add(uint16(100), []byte(`[{"devid":""}]`), "", false)
	f.Add(uint16(100), []byte(`[]`), "x),or=(devid.neq.z", false)
	f.Add(uint16(301), []byte(`{"message":"JWT expired"}`), "A", false)
	f.Add(uint16(303), []byte(`{"code":"42501"}`), "A", false)
	f.Add(uint16(100), []byte{}, "A", true)
	f.Fuzz(func(t *testing.T, status uint16, body []byte, list string, fail bool) {
		devices := strings.Split(list, ",")
		if len(devices) > MaxBatch {
			devices = devices[:MaxBatch]
		}
		r, a := fuzzREST(t, status, body, fail)
		m, err := r.Visible(context.Background(), nil, fuzzToken, devices)
		noSecret(t, err, string(body), list)
		ids, ok := refDevIDs(body)
		// Device IDs go into the URL unquoted (they are [A-Za-z0-9_-] once
		// the handler has checked them); other bytes may make it no URL,
		// and no request is made.
		if !a.Asked || a.Fail || a.Status != http.StatusOK || !ok {
			wantErr := ErrUnavailable
			if a.Asked && !a.Fail && a.Status == http.StatusUnauthorized && !resttest.APIKeyRefused(body, maxRESTBody) {
				wantErr = ErrTokenRefused
			}
			if m != nil || !errors.Is(err, wantErr) || errors.Is(err, ErrDenied) {
				t.Fatalf("asked %v, status %d, failed %v, body %q: %v, %v; want no map and %v", a.Asked, a.Status, fail, body, m, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		found := map[string]bool{}
		for _, id := range ids {
			found[id] = true
		}
		asked := map[string]bool{}
		for _, d := range devices {
			asked[d] = true
			if v, in := m[d]; !in || v != found[d] {
				t.Fatalf("body %q (rows %q), devices %q: %v; %q is %v, want %v", body, ids, devices, m, d, v, found[d])
			}
		}
		for d := range m {
			if !asked[d] {
				t.Fatalf("body %q, devices %q: %v holds %q, not asked", body, devices, m, d)
			}
		}
	})
}
