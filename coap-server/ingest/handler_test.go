package ingest_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	coapNet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

type fullStore struct{}

func (fullStore) Enqueue(storage.Record) error { return storage.ErrQueueFull }

type recorder struct {
	mu      sync.Mutex
	entries []*livelog.Entry
}

func (r *recorder) Broadcast(e *livelog.Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, e)
}

// When storage cannot take an uplink, it is refused with 5.03 and Max-Age
// (RFC 7252 §5.9.3.4) instead of accepted and lost: the device keeps its
// data and retries, and the live log does not show an uplink that will
// never be stored.
func TestQueueFullRefusesWithServiceUnavailable(t *testing.T) {
	live := &recorder{}
	m := ingest.NewMetrics(prometheus.NewRegistry())
	h := &ingest.Handler{Live: live, Store: fullStore{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m}
	ln, err := coapNet.NewListenUDP("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := ingest.NewUDPServer(h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()

	cc, err := udp.Dial(ln.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	b, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "FULL", UplinkCount: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Code() != codes.ServiceUnavailable {
		t.Fatalf("code %v, want 5.03", resp.Code())
	}
	if maxAge, err := resp.Options().GetUint32(message.MaxAge); err != nil || maxAge != ingest.RetryAfter {
		t.Errorf("Max-Age %d (%v), want %d", maxAge, err, ingest.RetryAfter)
	}
	if got := testutil.ToFloat64(m.Rejected("queue_full")); got != 1 {
		t.Errorf("rejected{queue_full} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Accepted); got != 0 {
		t.Errorf("accepted = %v, want 0", got)
	}
	live.mu.Lock()
	defer live.mu.Unlock()
	if len(live.entries) != 0 {
		t.Errorf("live log got %d entries for a refused uplink", len(live.entries))
	}
}
