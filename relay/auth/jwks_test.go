package auth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// countingTransport counts the response body bytes the client consumed.
type countingTransport struct{ read atomic.Int64 }

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil {
		resp.Body = countingBody{resp.Body, &c.read}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// serveBytes is a JWKS endpoint answering body.
func serveBytes(t *testing.T, body []byte) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A JWKS endpoint answering 2 MiB of valid keys (the real one first, so
// that the set would verify if it were read) is refused after the limit,
// counted and logged; the same client against a normal JWKS verifies.
func TestJWKSResponseIsBounded(t *testing.T) {
	key, jwk := ecJWK(t, "ec")
	_, filler := ecJWK(t, "filler")
	one, _ := json.Marshal(filler)
	keys := []map[string]string{jwk}
	for len(keys)*len(one) < 2<<20 {
		keys = append(keys, filler)
	}
	huge, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	big := serveBytes(t, huge)

	counted := &countingTransport{}
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	// The first fetch happens inside NewVerifier: no waiting needed.
	v := newVerifier(t, auth.Options{JWKSURL: big.URL, Issuer: issuer,
		HTTPClient: &http.Client{Transport: counted}, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if n := counted.read.Load(); n > auth.MaxJWKSBytes+1 {
		t.Errorf("read %d bytes of a %d-byte JWKS, want at most %d", n, len(huge), auth.MaxJWKSBytes+1)
	}
	tok := sign(t, jwt.SigningMethodES256, "ec", key, claims(nil))
	if _, err := v.Verify(context.Background(), tok); !errors.Is(err, auth.ErrSignature) {
		t.Errorf("token signed by a key of the oversized JWKS: %v, want ErrSignature", err)
	}
	// Two fetches: the first, and the one for the kid it did not know.
	if got := counterValue(t, reg, "nbiot_relay_jwks_fetch_failures_total"); got != 2 {
		t.Errorf("nbiot_relay_jwks_fetch_failures_total %v, want 2", got)
	}
	if !strings.Contains(logs.String(), auth.ErrJWKSTooLarge.Error()) || strings.Contains(logs.String(), tok) {
		t.Errorf("log %q: want the size error, never the token", logs.String())
	}

	small := newJWKSServer(t)
	small.serve(jwk)
	v = newVerifier(t, auth.Options{JWKSURL: small.URL, Issuer: issuer, HTTPClient: &http.Client{Transport: counted}})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Errorf("normal JWKS through the same client: %v", err)
	}
}

// The limit is exact: a JWKS of MaxJWKSBytes (padded with JSON white
// space) verifies, one byte more does not.
func TestJWKSLimitIsExact(t *testing.T) {
	key, jwk := ecJWK(t, "ec")
	set, _ := json.Marshal(map[string]any{"keys": []map[string]string{jwk}})
	tok := sign(t, jwt.SigningMethodES256, "ec", key, claims(nil))
	for size, ok := range map[int]bool{auth.MaxJWKSBytes: true, auth.MaxJWKSBytes + 1: false} {
		body := slices.Concat(set[:len(set)-1], bytes.Repeat([]byte(" "), size-len(set)), []byte("}"))
		v := newVerifier(t, auth.Options{JWKSURL: serveBytes(t, body).URL, UnknownKIDEvery: time.Hour})
		if _, err := v.Verify(context.Background(), tok); (err == nil) != ok {
			t.Errorf("JWKS of %d bytes: %v, want verified %v", len(body), err, ok)
		}
	}
}

// counterValue is the value of the counter name registered on reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not registered", name)
	return 0
}
