package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/httpapi"
	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

const token = "slow-test-token-0123456789"

func newServer(t *testing.T, peer wspeer.Config) (*httptest.Server, *hub.Hub, *hub.Metrics) {
	return newServerWith(t, peer, false)
}

// newServerWith is newServer; with smallBuffers, the server's sockets get
// a send buffer of 4 KiB, so that what a client that stops reading leaves
// waiting is in the peer's queue, not in the kernel (whose own buffers grow
// up to net.ipv4.tcp_wmem's maximum, a machine's setting).
func newServerWith(t *testing.T, peer wspeer.Config, smallBuffers bool) (*httptest.Server, *hub.Hub, *hub.Metrics) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := hub.NewMetrics(reg)
	h := hub.New(m)
	api := &httpapi.Server{Hub: h, Token: token, Gatherer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Peer: peer}
	srv := httptest.NewUnstartedServer(api.Handler())
	if smallBuffers {
		srv.Listener = smallSendBuffers{srv.Listener}
	}
	srv.Start()
	t.Cleanup(func() {
		api.CloseSubscribers()
		srv.Close()
	})
	return srv, h, m
}

// smallSendBuffers gives every accepted connection a 4 KiB send buffer.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

func dial(t *testing.T, srv *httptest.Server, d *websocket.Dialer) *websocket.Conn {
	t.Helper()
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?deviceId=D", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws
}

// A subscriber that stops reading is disconnected once its queue is full;
// a fast subscriber on the same device receives every frame meanwhile.
func TestSlowSubscriberIsDisconnected(t *testing.T) {
	sent := slowDroppedAfter(t, wspeer.Config{QueueSize: 8, WriteTimeout: 2 * time.Second})
	t.Logf("slow subscriber dropped after %d frames of 32 KiB", sent)
}

// A subscriber's queue is bounded in bytes too: with room for 1,000 frames
// but 128 KiB, a subscriber that stops reading is cut once 128 KiB of
// frames wait (plus the few that its small socket buffers hold), long
// before 1,000 frames. /ws counted frames only: 256 frames of up to 64 KiB
// by default.
func TestSlowSubscriberIsCutByBytes(t *testing.T) {
	sent := slowDroppedAfter(t, wspeer.Config{QueueSize: 1000, QueueBytes: 128 << 10, WriteTimeout: 2 * time.Second})
	if sent >= 100 {
		t.Fatalf("slow subscriber dropped after %d frames of 32 KiB, want well before its 1,000 frames of room", sent)
	}
	t.Logf("slow subscriber dropped after %d frames of 32 KiB", sent)
}

// slowDroppedAfter runs a subscriber that never reads, with tiny socket
// buffers, and a fast one on the same device, and returns the frames of
// 32 KiB published until the slow one was dropped; the fast one must get
// every frame, before and after.
func slowDroppedAfter(t *testing.T, cfg wspeer.Config) int {
	t.Helper()
	srv, h, m := newServerWith(t, cfg, true)
	// The slow client has tiny socket buffers and never reads.
	slowDialer := &websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = c.(*net.TCPConn).SetReadBuffer(4096)
		}
		return c, err
	}}
	dial(t, srv, slowDialer)
	fast := dial(t, srv, websocket.DefaultDialer)

	// The fast reader reports each frame, and the publisher waits for it:
	// the fast subscriber is never behind, the slow one falls behind at once.
	got := make(chan struct{})
	go func() {
		for {
			if _, _, err := fast.ReadMessage(); err != nil {
				close(got)
				return
			}
			got <- struct{}{}
		}
	}()

	big := strings.Repeat("x", 32<<10)
	sent := 0
	for ; sent < 5000 && testutil.ToFloat64(m.Dropped) == 0; sent++ {
		feed(h, uint64(sent+1), &livelog.Entry{DeviceID: "D", Type: livelog.TypeUplink, Message: big, Timestamp: livelog.Timestamp(time.Now())})
		if _, ok := <-got; !ok {
			t.Fatalf("fast subscriber lost after %d frames", sent)
		}
	}
	if testutil.ToFloat64(m.Dropped) == 0 {
		t.Fatalf("slow subscriber never dropped after %d frames", sent)
	}
	// Once dropped, the slow subscriber leaves the hub; the fast one stays.
	testwait.ForState(t, "the slow subscriber to leave the hub", func() (bool, string) {
		n := h.Len()
		return n == 1, fmt.Sprintf("hub has %d subscribers, want 1 (the fast one)", n)
	}, testwait.Within(5*time.Second))
	// The fast subscriber still receives.
	feed(h, uint64(sent+2), &livelog.Entry{DeviceID: "D", Type: livelog.TypeStatus, Message: "end", Timestamp: livelog.Timestamp(time.Now())})
	if _, ok := <-got; !ok {
		t.Fatal("fast subscriber lost after the slow one was dropped")
	}
	return sent
}

// The subscriber limit is enforced with 503, and a slot frees when a
// subscriber leaves.
func TestSubscriberLimit(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := hub.New(hub.NewMetrics(reg))
	api := &httpapi.Server{Hub: h, Token: token, Gatherer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MaxSubscribers: 2}
	srv := httptest.NewServer(api.Handler())
	defer srv.Close()
	defer api.CloseSubscribers()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	hdr := http.Header{"Authorization": {"Bearer " + token}}
	first, _, err := websocket.DefaultDialer.Dial(url, hdr)
	if err != nil {
		t.Fatal(err)
	}
	second, _, err := websocket.DefaultDialer.Dial(url, hdr)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, resp, err := websocket.DefaultDialer.Dial(url, hdr); err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third subscriber: %v %v, want 503", resp, err)
	}
	first.Close()
	// The slot frees once the server has seen the close: retry until then.
	deadline := time.Now().Add(5 * time.Second)
	for {
		third, resp, err := websocket.DefaultDialer.Dial(url, hdr)
		if err == nil {
			third.Close()
			break
		}
		if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("after one left: %v %v", resp, err)
		}
		time.Sleep(5 * time.Millisecond) // polling an observable state, bounded
	}
}

// A client that never answers pings is disconnected after PongTimeout.
func TestSilentSubscriberTimesOut(t *testing.T) {
	srv, h, _ := newServer(t, wspeer.Config{PingInterval: 20 * time.Millisecond, PongTimeout: 100 * time.Millisecond})
	ws := dial(t, srv, websocket.DefaultDialer) // never reads, so never answers a ping
	_ = ws
	testwait.For(t, "the silent subscriber to leave the hub", func() bool { return h.Len() == 0 }, testwait.Within(5*time.Second))
}

// feed puts e on the hub at position seq, as the stream's consumer does.
func feed(h *hub.Hub, seq uint64, e *livelog.Entry) {
	b, err := e.Marshal()
	if err != nil {
		panic(err)
	}
	h.Feed(seq, e.DeviceID, b)
}
