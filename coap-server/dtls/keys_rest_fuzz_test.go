package dtls_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
)

// restAnswer is an http.RoundTripper in memory answering every request
// with body: RESTKeys runs whole (request, key header, read, decode)
// without a socket per input.
type restAnswer struct{ body []byte }

func (a *restAnswer) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: r,
		Body: io.NopCloser(bytes.NewReader(a.body)), ContentLength: int64(len(a.body))}, nil
}

// keyRow is a row of device_credentials as LoadPSKs asks for it.
type keyRow struct {
	DevID string `json:"devid"`
	PSK   string `json:"psk"`
}

// FuzzRESTKeys feeds RESTKeys arbitrary answers of PostgREST for
// device_credentials (SUPABASE_URL mode; a proxy in front of it may answer
// anything). Neither lookup may panic. LoadPSKs returns a map only for a
// JSON array whose every PSK decodes, holding each row's key under that
// row's own devid, nothing else (a row of another device than asked is
// kept under its devid, which the cache never asks for); LoadPSK returns
// the first row's key, and ErrUnknownDevice only for an empty array.
// Anything else (null, an object, a bad PSK, truncated JSON) is an error
// that is not ErrUnknownDevice: LoadPSKs' empty map would delete every
// cached key, LoadPSK's unknown would refuse the device for NegativeTTL.
// No error shows the service key or a PSK's hex.
func FuzzRESTKeys(f *testing.F) {
	for _, s := range []string{
		`[{"devid":"ABC123","psk":"\\x0a1b2c3d4e5f60718293a4b5c6d7e8f9"}]`,
		`[{"devid":"ABC123","psk":"\\x0a1b"},{"devid":"DEF456","psk":"\\x00ff"}]`,
		`[{"devid":"OTHER","psk":"\\x0a1b"}]`, // a device not asked for
		`[{"devid":"ABC123","psk":"\\x0a1b"},{"devid":"ABC123","psk":"\\xffff"}]`,
		`[{"psk":"\\x"}]`,
		`[]`,
		`null`,
		"\n null \n",
		`{}`,
		`{"code":"42501","message":"permission denied for table device_credentials","details":null,"hint":null}`,
		`[{"devid":"ABC123","psk":"\\x0a1b`, // truncated
		`[{"devid":"ABC123","psk":"\\x0a1b"},`,
		`[{"devid":"ABC123","psk":null}]`,
		`[{"devid":null,"psk":"\\x0a1b"}]`,
		`[{"devid":"ABC123","psk":"0a1b2c3d4e5f6071"}]`,       // no \x
		`[{"devid":"ABC123","psk":"\\x0a1b2c3d4e5f607g"}]`,    // not hex
		`[{"devid":"ABC123","psk":"\\x0a1b2c3d4e5f60718"}]`,   // odd length
		`[{"devid":"ABC123","psk":[10,27]}]`,                  // wrong type
		`[{"devid":123456789012345678901234567890,"psk":""}]`, // huge number
		`[{"devid":"ABC123","psk":"\\x0a1b"},{"devid":"X","psk":"\\xzz00112233445566"}]`,
		`[null]`,
		`[1]`,
		`"\\x0a1b"`,
		`<html>502 Bad Gateway</html>`,
		``,
	} {
		f.Add([]byte(s))
	}
	const key = "sb_secret_dtlskeysfuzz0123456789"
	a := &restAnswer{}
	r := dtls.RESTKeys{BaseURL: "http://supabase.invalid", ServiceKey: key, Client: &http.Client{Transport: a}}
	ctx := context.Background()
	asked := []string{"ABC123", "DEF456"}
	f.Fuzz(func(t *testing.T, body []byte) {
		a.body = body
		isArray := json.Valid(body) && bytes.TrimLeft(body, " \t\r\n")[0] == '['
		var rows []keyRow
		decoded := json.Unmarshal(body, &rows) == nil
		var pskRows []struct {
			PSK string `json:"psk"`
		}
		pskDecoded := json.Unmarshal(body, &pskRows) == nil

		got, err := r.LoadPSKs(ctx, asked)
		if err != nil {
			checkErr(t, body, err, key, rows)
			if got != nil || errors.Is(err, dtls.ErrUnknownDevice) {
				t.Fatalf("%q: LoadPSKs %d keys, %v: want no map and not unknown", body, len(got), err)
			}
		} else {
			if !isArray || !decoded {
				t.Fatalf("%q is not a JSON array of rows, yet LoadPSKs read %d keys", body, len(got))
			}
			want := map[string][]byte{}
			for _, row := range rows {
				psk, derr := dtls.DecodeBytea(row.PSK)
				if derr != nil {
					t.Fatalf("%q: LoadPSKs took a row whose PSK %q does not decode (%v)", body, row.PSK, derr)
				}
				want[row.DevID] = psk // devid is the key: PostgREST never sends two
			}
			if len(got) != len(want) {
				t.Fatalf("%q: LoadPSKs read %d keys, want %d", body, len(got), len(want))
			}
			for id, psk := range want {
				if g, ok := got[id]; !ok || !bytes.Equal(g, psk) {
					t.Fatalf("%q: LoadPSKs key of %q = %x (%v), want %x", body, id, g, ok, psk)
				}
			}
		}

		psk, err := r.LoadPSK(ctx, "ABC123")
		switch {
		case err == nil:
			if !isArray || !pskDecoded || len(pskRows) == 0 {
				t.Fatalf("%q: LoadPSK read %x from what is not a JSON array of rows", body, psk)
			}
			want, derr := dtls.DecodeBytea(pskRows[0].PSK)
			if derr != nil || !bytes.Equal(psk, want) {
				t.Fatalf("%q: LoadPSK read %x, want the first row's %x (%v)", body, psk, want, derr)
			}
		case errors.Is(err, dtls.ErrUnknownDevice):
			if !isArray || !pskDecoded || len(pskRows) != 0 {
				t.Fatalf("%q: LoadPSK says unknown device, but it is not an empty array", body)
			}
		default:
			checkErr(t, body, err, key, rows)
			if psk != nil {
				t.Fatalf("%q: LoadPSK %x with the error %v", body, psk, err)
			}
		}
	})
}

// checkErr fails when err shows the service key or the hex of a PSK in
// body (of 8 digits or more: shorter ones could be any word of the text).
func checkErr(t *testing.T, body []byte, err error, key string, rows []keyRow) {
	t.Helper()
	msg := err.Error()
	if strings.Contains(msg, key) {
		t.Fatalf("%q: the error shows the service key: %v", body, err)
	}
	for _, row := range rows {
		if h, ok := strings.CutPrefix(row.PSK, `\x`); ok && len(h) >= 8 && strings.Contains(msg, h) {
			t.Fatalf("%q: the error shows a PSK: %v", body, err)
		}
	}
	// A body the rows do not decode from may still hold PSKs: look for
	// any \x-prefixed run of 8 or more hex digits in it.
	for _, part := range strings.Split(string(body), `\\x`)[1:] {
		n := 0
		for n < len(part) && strings.IndexByte("0123456789abcdefABCDEF", part[n]) >= 0 {
			n++
		}
		if n >= 8 && strings.Contains(msg, part[:n]) {
			t.Fatalf("%q: the error shows a PSK's hex %q: %v", body, part[:n], err)
		}
	}
}
