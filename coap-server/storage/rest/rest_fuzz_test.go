package rest_test

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

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/rest"
	"github.com/nbiot-live/nbiot-live/internal/clip"
)

// answerAll is an http.RoundTripper in memory giving every request the
// same answer: the writer runs whole (postgrest-go, its transport,
// classify) without a socket per input.
type answerAll struct {
	status   int
	body     []byte
	requests int
}

func (a *answerAll) RoundTrip(r *http.Request) (*http.Response, error) {
	a.requests++
	return &http.Response{StatusCode: a.status, Header: http.Header{}, Request: r,
		Body: io.NopCloser(bytes.NewReader(a.body)), ContentLength: int64(len(a.body))}, nil
}

// maxError bounds the error of any answer: its prefix, and the answer's
// code and message clipped (rest.MaxErrorCode, rest.MaxErrorMessage).
const maxError = 100 + rest.MaxErrorCode + rest.MaxErrorMessage + 2*len("…")

// FuzzErrorBody feeds the writer arbitrary answers of PostgREST (a status
// from 200 to 599 and a body; a proxy in front of it may answer anything).
// Write must not panic. Below 400 the batch is written (four upserts).
// From 400 the first upsert fails with "rest devices: HTTP <status>
// <code>: <message>", code and message read from the body's JSON object
// (else no code and the status's text), wrapping storage.ErrRejected
// exactly when classify says (400 or 409 with a SQLSTATE of class 22 or
// 23: a poison row, skipped; anything else is retried). The error is
// bounded by the body (its code and message only, at most 3 bytes a
// byte of the body: an invalid UTF-8 byte reads as U+FFFD) and by
// maxError (both clipped), and never shows the service key unless the
// body does.
func FuzzErrorBody(f *testing.F) {
	for _, c := range []struct {
		status int
		body   string
	}{
		{409, `{"code":"23505","message":"duplicate key value violates unique constraint \"devices_pkey\"","details":"Key (devid)=(KEY1) already exists.","hint":null}`},
		{400, `{"code":"22P02","message":"invalid input syntax for type uuid: \"x\"","details":null,"hint":null}`},
		{400, `{"code":"23503","message":"insert or update on table \"activity\" violates foreign key constraint","details":null,"hint":null}`},
		{400, `{"code":"PGRST102","message":"Empty or invalid json","details":null,"hint":null}`},
		{401, `{"code":"PGRST301","message":"JWSError JWSInvalidSignature","details":null,"hint":null}`},
		{403, `{"code":"42501","message":"permission denied for table devices","details":null,"hint":null}`},
		{404, `{"code":"PGRST205","message":"Could not find the table 'public.devices' in the schema cache","details":null,"hint":"Perhaps you meant the table 'public.device'"}`},
		{409, `{"code":"23505"}`},
		{409, `{"code":23505,"message":"a number"}`},
		{400, `{"code":"23505","message":null}`},
		{400, `{"CODE":"23505","Message":"other case"}`},
		{409, `{"code":"23505","message":"dup`}, // truncated
		{400, `null`},
		{503, ` null `},
		{500, `[]`},
		{500, `"text"`},
		{502, `<html><body>502 Bad Gateway</body></html>`},
		{504, ``},
		{400, "{\"code\":\"23505\",\"message\":\"\xff\xfe\xfd\"}"}, // not UTF-8
		{400, `{"code":"99999999999999999999999","message":1e999}`},
		{599, `{}`},
		{201, ``},
		{204, `{"code":"23505"}`},
		{299, `garbage`},
		{301, ``},
		{409, `{"code":"23505","message":"` + strings.Repeat("é", 2000) + `"}`},
		{500, `{"code":"` + strings.Repeat("9", 100) + `","message":"x"}`},
	} {
		f.Add(uint16(c.status-200), []byte(c.body))
	}
	const key = "sb_secret_restfuzz0123456789"
	a := &answerAll{}
	w, err := rest.New("https://project.supabase.co", key, rest.Options{Transport: a})
	if err != nil {
		f.Fatal(err)
	}
	rows := oneRecord()
	f.Fuzz(func(t *testing.T, s uint16, body []byte) {
		*a = answerAll{status: 200 + int(s)%400, body: body}
		err := w.Write(context.Background(), rows)
		if a.status < 400 {
			if err != nil || a.requests != 4 {
				t.Fatalf("HTTP %d %q: %v after %d requests, want the batch written by 4", a.status, body, err, a.requests)
			}
			return
		}
		if err == nil || a.requests != 1 {
			t.Fatalf("HTTP %d %q: %v after %d requests, want an error after 1", a.status, body, err, a.requests)
		}
		var pe struct{ Code, Message string }
		if json.Unmarshal(body, &pe) != nil {
			pe.Code, pe.Message = "", http.StatusText(a.status)
		}
		pe.Code, pe.Message = clip.String(pe.Code, rest.MaxErrorCode), clip.String(pe.Message, rest.MaxErrorMessage)
		rejected := (a.status == 400 || a.status == 409) &&
			(strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23"))
		if errors.Is(err, storage.ErrRejected) != rejected {
			t.Fatalf("HTTP %d %q (code %q): %v; rejected should be %v", a.status, body, pe.Code, err, rejected)
		}
		want := "rest devices: HTTP " + strconv.Itoa(a.status) + " " + pe.Code + ": " + pe.Message
		if rejected {
			want = storage.ErrRejected.Error() + ": " + want
		}
		if err.Error() != want {
			t.Fatalf("HTTP %d %q: error %q, want %q", a.status, body, err, want)
		}
		if n := len(err.Error()); n > 100+3*len(body) || n > maxError {
			t.Fatalf("HTTP %d: a %d-byte error from a %d-byte body", a.status, n, len(body))
		}
		if strings.Contains(err.Error(), key) && !bytes.Contains(body, []byte(key)) {
			t.Fatalf("HTTP %d %q: the error shows the service key: %v", a.status, body, err)
		}
	})
}
