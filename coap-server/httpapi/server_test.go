package httpapi_test

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/httpapi"
	"github.com/nbiot-live/nbiot-live/coap-server/hub"
)

// serve runs h behind NewHTTPServer on loopback until the test ends.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httpapi.NewHTTPServer(h, slog.New(slog.DiscardHandler))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// The public routes do not serve /metrics; MetricsHandler does.
func TestMetricsNotOnPublicRoutes(t *testing.T) {
	reg := prometheus.NewRegistry()
	api := &httpapi.Server{Hub: hub.New(hub.NewMetrics(reg)), Token: "t0123456789abcdef", Gatherer: reg, Logger: slog.New(slog.DiscardHandler)}
	public := serve(t, api.Handler())
	resp, err := http.Get(public + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("public /metrics: HTTP %d, want 404", resp.StatusCode)
	}
	private := serve(t, httpapi.MetricsHandler(reg))
	resp, err = http.Get(private + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "nbiot_ws_subscribers") {
		t.Errorf("metrics listener: HTTP %d %.100q", resp.StatusCode, b)
	}
}

// Oversized request headers are refused before any handler runs.
func TestHeaderSizeLimit(t *testing.T) {
	base := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	req, _ := http.NewRequest("GET", base+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 2*httpapi.MaxHeaderBytes))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("HTTP %d, want 431", resp.StatusCode)
	}
}
