package httpapi_test

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/httpapi"
	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
)

// TestRejectionsAreCounted: every refusal of /ws is counted by reason in
// nbiot_ws_rejected_total, so that token guessing, a client sending bad
// queries, the subscriber limit and a live log that cannot be reached
// show on /metrics. None was counted.
func TestRejectionsAreCounted(t *testing.T) {
	const token = "t0123456789abcdef"
	bearer := http.Header{"Authorization": {"Bearer " + token}}
	ws := http.Header{
		"Authorization":         {"Bearer " + token},
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}
	closed := openLog(t, stream.Config{}, "D", 0)
	closed.Close() // a live log that cannot be reached
	for _, c := range []struct {
		reason string
		server func(*httpapi.Server)
		query  string
		header http.Header
		status int
	}{
		{httpapi.RejectUnauthorized, nil, "", nil, http.StatusUnauthorized},
		{httpapi.RejectUnauthorized, nil, "", http.Header{"Authorization": {"Bearer wrong"}}, http.StatusUnauthorized},
		{httpapi.RejectBadRequest, nil, "deviceId=" + strings.Repeat("a&deviceId=", httpapi.MaxDevicesPerSubscriber) + "a", ws, http.StatusBadRequest},
		{httpapi.RejectBadRequest, nil, "deviceId=a.b", ws, http.StatusBadRequest},
		{httpapi.RejectBadRequest, nil, "since=x", ws, http.StatusBadRequest},
		{httpapi.RejectBadRequest, nil, "tail=-1", ws, http.StatusBadRequest},
		{httpapi.RejectBusy, func(s *httpapi.Server) { s.MaxSubscribers = 1 }, "", ws, http.StatusServiceUnavailable},
		{httpapi.RejectUnavailable, func(s *httpapi.Server) {
			s.Feed = hub.NewFeeder(func() (func(), error) { return nil, errors.New("nats: down") }, 0)
		}, "", ws, http.StatusServiceUnavailable},
		{httpapi.RejectUnavailable, func(s *httpapi.Server) { s.History = closed }, "since=0", ws, http.StatusServiceUnavailable},
		{httpapi.RejectUpgrade, nil, "", bearer, http.StatusBadRequest}, // no handshake asked for
	} {
		reg := prometheus.NewRegistry()
		m := httpapi.NewMetrics(reg)
		api := &httpapi.Server{Hub: hub.New(hub.NewMetrics(reg)), Token: token, Gatherer: reg, Metrics: m, Logger: slog.New(slog.DiscardHandler)}
		if c.server != nil {
			c.server(api)
		}
		srv := httptest.NewServer(api.Handler())
		url := srv.URL + "/ws?" + c.query
		if api.MaxSubscribers == 1 { // a subscriber holds the one slot
			first, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(url, "http"), bearer)
			if err != nil {
				t.Fatal(err)
			}
			defer first.Close()
		}
		req, _ := http.NewRequest("GET", url, nil)
		req.Header = c.header
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// A failed upgrade is counted after Upgrade wrote its answer, but
		// an HTTP/1.1 answer this small goes out when the handler returns.
		if got := testutil.ToFloat64(m.Rejected.WithLabelValues(c.reason)); resp.StatusCode != c.status || got != 1 {
			t.Errorf("%s ?%.40s: HTTP %d, counted %v; want %d, 1", c.reason, c.query, resp.StatusCode, got, c.status)
		}
		if n := testutil.CollectAndCount(m.Rejected); n != 1 {
			t.Errorf("%s ?%.40s: %d reasons counted, want 1", c.reason, c.query, n)
		}
		api.CloseSubscribers()
		srv.Close()
	}
}
