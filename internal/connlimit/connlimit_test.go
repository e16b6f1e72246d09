package connlimit

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// serve runs an http.Server on a Listener of max connections; /hold
// hijacks its connection and keeps it (as a WebSocket does) until the
// client closes it.
func serve(t *testing.T, max int) (*Listener, *Metrics) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry(), "test")
	l := New(ln, max, m)
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/hold", func(w http.ResponseWriter, _ *http.Request) {
		c, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\n\r\n")
		rw.Flush()
		go func() {
			io.Copy(io.Discard, c) // until the client closes
			c.Close()
		}()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: time.Minute}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l, m
}

func dial(t *testing.T, l *Listener) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func get(t *testing.T, c net.Conn, path string) string {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(line)
}

// Connections past the bound are answered 503 at once and counted, those
// held (half a request sent, a hijacked WebSocket) keep their places until
// closed, and a place given back serves the next client. Without the
// bound every connection got a goroutine and its buffers.
func TestConnectionsPastTheBoundAreRefused(t *testing.T) {
	l, m := serve(t, 2)
	half := dial(t, l)
	io.WriteString(half, "GET /ok HTTP/1.1\r\nHost") // slowloris
	ws := dial(t, l)
	if got := get(t, ws, "/hold"); got != "HTTP/1.1 101 Switching Protocols" {
		t.Fatalf("hold: %q", got)
	}
	testwait.ForState(t, "two connections held", func() (bool, string) {
		return l.Open() == 2, strings.Repeat("|", l.Open())
	})
	if got := get(t, dial(t, l), "/ok"); got != "HTTP/1.1 503 Service Unavailable" {
		t.Fatalf("third connection: %q, want a 503", got)
	}
	if got := testutil.ToFloat64(m.Refused); got != 1 {
		t.Fatalf("refused %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Open); got != 2 {
		t.Fatalf("open gauge %v, want 2", got)
	}
	// The hijacked connection's place comes back when it is closed.
	ws.Close()
	testwait.ForState(t, "the WebSocket's place given back", func() (bool, string) {
		return l.Open() == 1, strings.Repeat("|", l.Open())
	})
	if got := get(t, dial(t, l), "/ok"); got != "HTTP/1.1 200 OK" {
		t.Fatalf("after a place came back: %q", got)
	}
}

func TestShare(t *testing.T) {
	if got := Share(400<<20, 16); got != 1600 {
		t.Fatalf("a sixteenth of 400 MiB: %d connections, want 1600", got)
	}
	if got := Share(1<<20, 16); got != 64 {
		t.Fatalf("tiny memory: %d, want the floor 64", got)
	}
}
