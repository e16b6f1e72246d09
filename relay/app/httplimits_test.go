package app_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/relay/app"
)

// Request headers past 32 KiB are refused (431) before any handler runs.
func TestRelayHeaderSizeLimit(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	req, _ := http.NewRequest("GET", "http://"+r.HTTPAddr().String()+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("HTTP %d, want 431", resp.StatusCode)
	}
}

// HTTP_ADDR holds a bounded number of TCP connections: past it a
// connection is answered 503 at once and counted. net/http gave each a
// goroutine and its buffers before any handler (and so MAX_CONNECTIONS)
// ran, so connections with half a request sent, or idle between requests,
// grew the relay without bound (an audit: 28,000 filled 400 MiB).
func TestRelayHTTPConnectionsAreBounded(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, func(cfg *app.Config) { cfg.HTTPConnections = 2 })
	addr := r.HTTPAddr().String()
	for range 2 {
		half, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer half.Close()
		io.WriteString(half, "GET /healthz HTTP/1.1\r\nHost") // the rest never comes
	}
	// The listener accepts in the order the connections came (the
	// kernel's queue): the third finds the two places taken.
	third, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	io.WriteString(third, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	third.SetReadDeadline(time.Now().Add(10 * time.Second))
	status, _ := bufio.NewReader(third).ReadString('\n')
	if !strings.HasPrefix(status, "HTTP/1.1 503") {
		t.Fatalf("with two connections held: %q, want a 503", status)
	}
	if got := counter(t, r.Metrics, "nbiot_relay_http_connections_refused_total", "", ""); got < 1 {
		t.Fatalf("nbiot_relay_http_connections_refused_total %v, want at least 1", got)
	}
}
