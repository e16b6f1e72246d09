package devices_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/relay/auth"
	"github.com/nbiot-live/nbiot-live/relay/devices"
)

// rejected is nbiot_relay_devices_rejected_total by reason, as scraped.
func rejected(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "nbiot_relay_devices_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// Every refusal of GET /devices is counted under its reason, exactly once;
// an answered list counts none. The REST backend is a real HTTP server
// answering what PostgREST would.
func TestRefusalsAreCounted(t *testing.T) {
	var status atomic.Int32
	rest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(int(status.Load()))
		if status.Load() == http.StatusOK {
			_, _ = w.Write([]byte("[]"))
		}
	}))
	t.Cleanup(rest.Close)
	reg := prometheus.NewRegistry()
	srv := httptest.NewServer(devices.New(devices.Options{Verifier: verifier(t), RESTURL: rest.URL, APIKey: publishable, Registerer: reg}))
	t.Cleanup(srv.Close)
	valid := token(t, uuid.New(), time.Hour)
	cases := []struct {
		name       string
		bearer     string
		restStatus int
		code       int
		reason     string // "" for none
	}{
		{"listed", valid, http.StatusOK, http.StatusOK, ""},
		{"no token", "", http.StatusOK, http.StatusUnauthorized, devices.RejectNoToken},
		{"too large", strings.Repeat("x", auth.MaxTokenLen+1), http.StatusOK, http.StatusUnauthorized, devices.RejectBadToken},
		{"expired", token(t, uuid.New(), -time.Hour), http.StatusOK, http.StatusUnauthorized, devices.RejectBadToken},
		{"garbage", "not.a.jwt", http.StatusOK, http.StatusUnauthorized, devices.RejectBadToken},
		{"refused by the database", valid, http.StatusUnauthorized, http.StatusUnauthorized, devices.RejectDenied},
		{"grant missing", valid, http.StatusForbidden, http.StatusServiceUnavailable, devices.RejectUnavailable},
	}
	for _, tc := range cases {
		status.Store(int32(tc.restStatus))
		before := rejected(t, reg)
		if code, _ := get(t, srv, "/devices", tc.bearer); code != tc.code {
			t.Errorf("%s: status %d, want %d", tc.name, code, tc.code)
		}
		after := rejected(t, reg)
		for _, r := range []string{devices.RejectNoToken, devices.RejectBadToken, devices.RejectDenied, devices.RejectNotFound, devices.RejectUnavailable} {
			want := before[r]
			if r == tc.reason {
				want++
			}
			if after[r] != want {
				t.Errorf("%s: reason %s counted %v, want %v", tc.name, r, after[r], want)
			}
		}
	}

	// Without sign-in: 404, counted as not_found.
	reg = prometheus.NewRegistry()
	off := httptest.NewServer(devices.New(devices.Options{Registerer: reg}))
	t.Cleanup(off.Close)
	if code, _ := get(t, off, "/devices", valid); code != http.StatusNotFound {
		t.Errorf("no sign-in: status %d, want 404", code)
	}
	if got := rejected(t, reg); got[devices.RejectNotFound] != 1 {
		t.Errorf("no sign-in: counted %v, want not_found 1", got)
	}
}
