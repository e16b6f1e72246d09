package httpapi_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/httpapi"
	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
)

// stuckHistory's Read runs until its context ends, then holds on until
// released: a history read still under way when the server shuts down.
type stuckHistory struct {
	reading, cancelled, release, returned chan struct{}
}

func (*stuckHistory) LivePosition(context.Context) (stream.Position, error) {
	return stream.Position{First: 1, Last: 10}, nil
}

func (*stuckHistory) TailStart(context.Context, string, int, uint64) (uint64, error) { return 1, nil }

func (s *stuckHistory) Read(ctx context.Context, _ []stream.Cursor, _ uint64, _ stream.ReadFunc) error {
	defer close(s.returned)
	close(s.reading)
	<-ctx.Done()
	close(s.cancelled)
	<-s.release
	return ctx.Err()
}

// CloseSubscribers returns only once no subscriber's history is being read
// any more: the program closes the stream right after it. The catch-up ran
// on a goroutine nobody waited for, so it could still be reading the
// stream when the stream closed.
func TestCloseSubscribersWaitsForTheHistory(t *testing.T) {
	const token = "t0123456789abcdef"
	reg := prometheus.NewRegistry()
	h := hub.New(hub.NewMetrics(reg))
	hist := &stuckHistory{make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})}
	api := &httpapi.Server{Hub: h, History: hist, Token: token, Gatherer: reg, Logger: slog.New(slog.DiscardHandler)}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?deviceId=D&since=0",
		http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	select {
	case <-hist.reading:
	case <-time.After(10 * time.Second):
		t.Fatal("the history was never read")
	}
	closed := make(chan struct{})
	go func() { api.CloseSubscribers(); close(closed) }()
	select {
	case <-hist.cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the history read was not cancelled by the shutdown")
	}
	// Whether something returns early can only be seen over some time.
	select {
	case <-closed:
		t.Fatal("CloseSubscribers returned while a history read was still under way")
	case <-time.After(300 * time.Millisecond):
	}
	close(hist.release)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("CloseSubscribers did not return once the history read ended")
	}
	select {
	case <-hist.returned:
	default:
		t.Fatal("CloseSubscribers returned before the history read did")
	}
}
