package ingest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"
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
	resp := servePost(t, h)(&nbiotv1.Uplink{DeviceId: "FULL", UplinkCount: 1})
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

// With the embedded server a strict Dedup is the only memory of recent
// uplinks, and it never forgets one early: at its bound a new uplink is
// refused with 5.03 and Max-Age (it is not accepted, the device retries)
// and counted as dedup_full, while a copy of one it holds is still
// answered 2.04. Plain-CoAP uplinks may fill seven eighths of it: two
// 96-byte answers of 220 bytes.
func TestStrictDedupBoundRefusesWithServiceUnavailable(t *testing.T) {
	live := streamtest.New(t, stream.Config{})
	m := ingest.NewMetrics(prometheus.NewRegistry())
	h := &ingest.Handler{Stream: live, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m,
		Dedup: ingest.NewStrictDedup(220, ingest.ExchangeLifetime)}
	post := servePost(t, h)
	var got []codes.Code
	for i := range 3 {
		resp := post(&nbiotv1.Uplink{DeviceId: "BUSY", UplinkCount: uint32(i)})
		got = append(got, resp.Code())
		if i == 2 {
			if maxAge, err := resp.Options().GetUint32(message.MaxAge); err != nil || maxAge != ingest.RetryAfter {
				t.Errorf("Max-Age %d (%v), want %d", maxAge, err, ingest.RetryAfter)
			}
		}
	}
	if want := []codes.Code{codes.Changed, codes.Changed, codes.ServiceUnavailable}; !slices.Equal(got, want) {
		t.Fatalf("codes %v, want %v (two answers fit)", got, want)
	}
	if n := testutil.ToFloat64(m.Rejected("dedup_full")); n != 1 {
		t.Errorf("rejected{dedup_full} = %v, want 1", n)
	}
	if n := len(live.All()); n != 2 {
		t.Errorf("live log has %d entries, want 2", n)
	}
}

// TestPlainFloodLeavesRoomForDevicesWithKeys: plain-CoAP uplinks (anyone
// can send them, naming any device) that fill a strict Dedup's share get
// 5.03, and an uplink over DTLS (an identity) is still answered 2.04 from
// the eighth kept for them. Before, one bound for all refused it too.
func TestPlainFloodLeavesRoomForDevicesWithKeys(t *testing.T) {
	live := streamtest.New(t, stream.Config{})
	m := ingest.NewMetrics(prometheus.NewRegistry())
	h := &ingest.Handler{Stream: live, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m,
		Dedup: ingest.NewStrictDedup(8*96, ingest.ExchangeLifetime)}
	plain := servePost(t, h)
	secure := servePost(t, h.Secure(func(mux.Conn) string { return "KEYED" }))
	var got []codes.Code
	for i := range 8 {
		got = append(got, plain(&nbiotv1.Uplink{DeviceId: "FLOOD", UplinkCount: uint32(i)}).Code())
	}
	if want := slices.Repeat([]codes.Code{codes.Changed}, 7); !slices.Equal(got[:7], want) || got[7] != codes.ServiceUnavailable {
		t.Fatalf("plain uplinks %v: want seven 2.04 (7/8 of the table), then 5.03", got)
	}
	if code := secure(&nbiotv1.Uplink{DeviceId: "KEYED", UplinkCount: 1}).Code(); code != codes.Changed {
		t.Errorf("uplink over DTLS after the flood: %v, want 2.04", code)
	}
	if code := plain(&nbiotv1.Uplink{DeviceId: "FLOOD", UplinkCount: 9}).Code(); code != codes.ServiceUnavailable {
		t.Errorf("plain uplink after that: %v, want 5.03", code)
	}
}

// The embedded server holds per-device state for every device with
// retained entries; past the bound a new device's uplink is refused with
// 5.03 (stream_devices), and a device already counted is still accepted.
func TestDeviceBoundRefusesANewDevice(t *testing.T) {
	live := streamtest.New(t, stream.Config{DeviceMemory: stream.DeviceBytes})
	m := ingest.NewMetrics(prometheus.NewRegistry())
	post := servePost(t, &ingest.Handler{Stream: live, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m})
	var got []codes.Code
	for i, dev := range []string{"OLD", "NEW", "OLD"} {
		got = append(got, post(&nbiotv1.Uplink{DeviceId: dev, UplinkCount: uint32(i)}).Code())
	}
	if want := []codes.Code{codes.Changed, codes.ServiceUnavailable, codes.Changed}; !slices.Equal(got, want) {
		t.Fatalf("codes %v, want %v", got, want)
	}
	if n := testutil.ToFloat64(m.Rejected("stream_devices")); n != 1 {
		t.Errorf("rejected{stream_devices} = %v, want 1", n)
	}
}

// servePost serves h on go-coap's UDP server and returns a post of one
// uplink to it, from one client, returning the answer.
func servePost(t *testing.T, h mux.Handler) func(*nbiotv1.Uplink) *pool.Message {
	t.Helper()
	ln, err := coapNet.NewListenUDP("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := ingest.NewUDPServer(h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	cc, err := udp.Dial(ln.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return func(u *nbiotv1.Uplink) *pool.Message {
		t.Helper()
		b, _ := proto.Marshal(u)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
}

// fill publishes uplinks until the stream refuses one as full.
func fill(t *testing.T, e *streamtest.Recorder) {
	t.Helper()
	for i := range 1000 {
		payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "FILL", UplinkCount: uint32(i)})
		a := uplink.Accepted{ID: uuid.New(), DeviceID: "FILL", ReceivedAt: time.Now(), Uplink: &nbiotv1.Uplink{}}
		if err := e.PublishUplink(context.Background(), a, payload); err != nil {
			if !errors.Is(err, stream.ErrFull) {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatal("the stream never filled up")
}
