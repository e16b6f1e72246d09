package app_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestMetricsOffThePublicListener: neither binary answers /metrics on its
// public HTTP address (it tells an outsider who is connected, which
// devices are busy and how the service is doing); each serves it on
// METRICS_ADDR, a listener of its own.
func TestMetricsOffThePublicListener(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	for _, b := range []struct {
		name           string
		public, metric string
		family         string
	}{
		{"coap-server", c.HTTPAddr().String(), c.MetricsAddr().String(), "nbiot_ws_subscribers"},
		{"relay", r.HTTPAddr().String(), r.MetricsAddr().String(), "nbiot_relay_"},
	} {
		t.Run(b.name, func(t *testing.T) {
			resp, err := http.Get("http://" + b.public + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || strings.Contains(string(body), "go_goroutines") {
				t.Fatalf("public %s/metrics: HTTP %d, body %.80q: metrics are served on the public listener", b.public, resp.StatusCode, body)
			}
			if m := scrape(t, "http://"+b.metric+"/metrics"); !strings.Contains(m, b.family) || !strings.Contains(m, "go_goroutines") {
				t.Errorf("METRICS_ADDR %s/metrics lacks %s*: %.200q", b.metric, b.family, m)
			}
		})
	}
}
