package ingest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	coapNet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/stream/streamtest"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// When the stream cannot take an uplink (UPLINKS at its byte limit), it is
// refused with 5.03 and Max-Age (RFC 7252 §5.9.3.4) instead of accepted
// and lost: the device keeps its data and retries, and the live log does
// not show an uplink that will never be stored.
func TestStreamFullRefusesWithServiceUnavailable(t *testing.T) {
	live := streamtest.New(t, stream.Config{Storage: true, UplinksBytes: 4096})
	fill(t, live)
	m := ingest.NewMetrics(prometheus.NewRegistry())
	h := &ingest.Handler{Stream: live, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m}
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
	if got := testutil.ToFloat64(m.Rejected("stream_full")); got != 1 {
		t.Errorf("rejected{stream_full} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Accepted); got != 0 {
		t.Errorf("accepted = %v, want 0", got)
	}
	if n := len(live.All()); n != 0 {
		t.Errorf("live log got %d entries for a refused uplink", n)
	}
}

// fill publishes uplinks until the stream refuses one as full.
func fill(t *testing.T, e *streamtest.Recorder) {
	t.Helper()
	for i := range 1000 {
		payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "FILL", UplinkCount: uint32(i)})
		a := uplink.Accepted{ID: uuid.New(), DeviceID: "FILL", ReceivedAt: time.Now(), Uplink: &nbiotv1.Uplink{}}
		if _, err := e.PublishUplink(context.Background(), a, payload, stream.MsgID("FILL", int32(i), nil, payload)); err != nil {
			if !errors.Is(err, stream.ErrFull) {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatal("the stream never filled up")
}
