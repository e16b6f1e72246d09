package app_test

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// HTTP_ADDR holds a bounded number of TCP connections, a /ws subscriber
// counted until it leaves: past it a connection is answered 503 at once
// and counted. net/http gave each a goroutine and its buffers before any
// handler (and so the subscriber bound) ran, so connections with half a
// request sent grew the process without bound (an audit: 28,000 filled
// 400 MiB).
func TestHTTPConnectionsAreBounded(t *testing.T) {
	a := startApp(t, func(c *app.Config) { c.HTTPConnections = 2 })
	addr := a.HTTPAddr().String()
	ws := dialWS(t, a, "")
	half, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	io.WriteString(half, "GET /healthz HTTP/1.1\r\nHost") // the rest never comes
	get := func() string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		status, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(status)
	}
	// Accepted in the order they came: the third finds both places taken.
	if got := get(); got != "HTTP/1.1 503 Service Unavailable" {
		t.Fatalf("with a subscriber and half a request held: %q, want a 503", got)
	}
	if got := counter(t, a.Metrics, "nbiot_http_connections_refused_total", nil); got != 1 {
		t.Fatalf("nbiot_http_connections_refused_total %v, want 1", got)
	}
	// The subscriber's place comes back when it leaves.
	ws.Close()
	testwait.ForState(t, "the subscriber's place given back", func() (bool, string) {
		got := get()
		return got == "HTTP/1.1 200 OK", got
	})
}
