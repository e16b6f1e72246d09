// Package rest is the storage writer for SUPABASE_URL +
// SUPABASE_SERVICE_KEY: each batch is up to four bulk upserts through
// Supabase's REST API (PostgREST), in the order devices, device_config,
// activity, sensor_data, each with `Prefer: return=minimal,
// resolution=merge-duplicates` and `on_conflict=` on the natural key, so a
// retried batch rewrites the same rows and never adds one.
//
// It uses github.com/supabase-community/postgrest-go directly rather than
// supabase-go, whose HTTP client has no timeout and no context (docs/pitfalls.md#postgrest-go).
// postgrest-go itself has three flaws worked around here, minimally:
//   - it takes no context: a fresh Client per Write (a few small structs)
//     whose Transport.Parent attaches the write's context to every request;
//   - it stores a JSON marshal error in the Client for good: a Client per
//     Write cannot poison later writes (and our rows cannot fail to marshal);
//   - it does not close error response bodies and hides the HTTP status: the
//     transport reads every body (bounded) into memory, closes it, and keeps
//     the status and PostgREST's error code for classify.
package rest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/supabase-community/postgrest-go"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/internal/clip"
	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// maxResponse bounds a response body kept in memory; with return=minimal
// a success has none, and PostgREST's errors are a few hundred bytes.
const maxResponse = 1 << 20

// Options configures the HTTP side; zero fields take the defaults.
type Options struct {
	// Transport replaces the default transport (tests, proxies).
	Transport http.RoundTripper
	// Timeout bounds one request (default 15 s); the queue's write timeout
	// bounds the whole batch.
	Timeout time.Duration
}

// Writer writes batches to Supabase's REST API.
type Writer struct {
	base    string
	headers map[string]string
	rt      http.RoundTripper
	timeout time.Duration
}

// Errors of New; they name the variable and never the key.
var (
	ErrURL = errors.New("SUPABASE_URL: want https://<project>.supabase.co")
	ErrKey = supa.ErrServiceKey
)

// New checks the key's kind and prepares the writer. The headers follow
// internal/supa's rule: a service_role JWT goes in both apikey and
// Authorization: Bearer; an sb_secret_ key, which is not a JWT, only in
// apikey (docs/pitfalls.md#postgrest-go).
func New(supabaseURL, serviceKey string, o Options) (*Writer, error) {
	supabaseURL = strings.TrimRight(supabaseURL, "/")
	if !strings.HasPrefix(supabaseURL, "http://") && !strings.HasPrefix(supabaseURL, "https://") {
		return nil, ErrURL
	}
	if err := supa.CheckServiceKey(serviceKey); err != nil {
		return nil, err
	}
	headers := supa.Headers(serviceKey)
	if o.Timeout <= 0 {
		o.Timeout = 15 * time.Second
	}
	if o.Transport == nil {
		o.Transport = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: o.Timeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   8,
			ForceAttemptHTTP2:     true,
		}
	}
	return &Writer{base: supabaseURL + "/rest/v1", headers: headers, rt: o.Transport, timeout: o.Timeout}, nil
}

// Write upserts the batch's rows table by table. A failure part-way leaves
// earlier tables written; the retry rewrites them idempotently.
func (w *Writer) Write(ctx context.Context, rows *storage.Rows) error {
	tr := &transport{ctx: ctx, parent: w.rt, timeout: w.timeout}
	c := postgrest.NewClient(w.base, "public", w.headers)
	c.Transport.Parent = tr
	for _, t := range []struct {
		table, onConflict string
		n                 int
		rows              any
	}{
		{"devices", "devid", len(rows.Devices), rows.Devices},
		{"device_config", "devid", len(rows.Configs), rows.Configs},
		{"activity", "uplink_id", len(rows.Activity), rows.Activity},
		{"sensor_data", "uplink_id,data_type", len(rows.Sensors), rows.Sensors},
	} {
		if t.n == 0 {
			continue
		}
		if _, _, err := c.From(t.table).Insert(t.rows, true, t.onConflict, "minimal", "").Execute(); err != nil {
			return classify(t.table, tr, err)
		}
	}
	return nil
}

// classify marks what retrying cannot fix: PostgREST's 400/409 answers
// for SQLSTATE classes 22 (data) and 23 (constraint). 401/403 (a wrong or
// revoked key), 404 (schema not migrated yet), 5xx and network errors are
// retried: the uplinks wait in the queue until the operator fixes it.
func classify(table string, tr *transport, err error) error {
	if tr.status == 0 {
		return fmt.Errorf("rest %s: %w", table, err)
	}
	e := fmt.Errorf("rest %s: HTTP %d %s: %s", table, tr.status, tr.code, tr.message)
	if (tr.status == http.StatusBadRequest || tr.status == http.StatusConflict) &&
		(strings.HasPrefix(tr.code, "22") || strings.HasPrefix(tr.code, "23")) {
		return fmt.Errorf("%w: %w", storage.ErrRejected, e)
	}
	return e
}

// maxErrorCode and maxErrorMessage bound the code and message of an error
// answer kept for classify's error (logged): PostgREST's are a few dozen
// bytes, a proxy or a misbehaving service may answer megabytes.
const (
	maxErrorCode    = 32
	maxErrorMessage = 256
)

// transport attaches the write's context and a per-request timeout, and
// reads and closes every response body (see the package comment). One
// transport serves one Write, whose requests are sequential.
type transport struct {
	ctx     context.Context
	parent  http.RoundTripper
	timeout time.Duration

	status        int
	code, message string
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(t.ctx, t.timeout)
	defer cancel()
	t.status, t.code, t.message = 0, "", ""
	resp, err := t.parent.RoundTrip(req.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	t.status = resp.StatusCode
	if resp.StatusCode >= 400 {
		var pe struct{ Code, Message string }
		if json.Unmarshal(body, &pe) == nil {
			// Into logs and errors: as short as PostgREST's own are.
			t.code, t.message = clip.String(pe.Code, maxErrorCode), clip.String(pe.Message, maxErrorMessage)
		} else {
			t.message = http.StatusText(resp.StatusCode)
		}
		// postgrest-go fails on a non-JSON error body and panics on null
		// (FuzzErrorBody); give it an object. classify reads t, not it.
		body, _ = json.Marshal(map[string]string{"code": t.code, "message": t.message})
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	return resp, nil
}
