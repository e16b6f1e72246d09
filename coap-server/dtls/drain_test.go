package dtls_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// stallStream is a storage stream whose PublishUplink the test holds in
// publish; entered is signalled once ctx, the handler's context, is set.
type stallStream struct {
	entered chan struct{}
	publish func(ctx context.Context) error
	ctx     context.Context
}

func (s *stallStream) PublishUplink(ctx context.Context, _ uplink.Accepted, _ []byte) error {
	s.ctx = ctx
	s.entered <- struct{}{}
	return s.publish(ctx)
}

func (s *stallStream) Log(ctx context.Context, _ *livelog.Entry, _ string) (uint64, bool, error) {
	return 1, false, ctx.Err()
}

func (s *stallStream) Stores() bool                                         { return true }
func (s *stallStream) LogAsync(*livelog.Entry)                              {}
func (s *stallStream) LogAsyncID(*livelog.Entry, string)                    {}
func (s *stallStream) Behind() bool                                         { return false }
func (s *stallStream) LogBehind(*livelog.Entry, string, func(uint64)) error { return nil }
func (s *stallStream) Notify(*livelog.Entry)                                {}

// hold waits for the uplink to be in publish.
func (s *stallStream) hold(t *testing.T) {
	t.Helper()
	waitOr(t, s.entered, "the uplink to reach the stream")
}

// staticKeys gives every identity drainKey.
type staticKeys struct{}

var drainKey = []byte("drain-key-0123456789")

func (staticKeys) LoadPSK(context.Context, string) ([]byte, error) { return drainKey, nil }

// waitOr waits for c, failing the test if that takes far longer than it
// ever should (a hang, not a timing check).
func waitOr(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// drainServer serves CoAPS with s as the stream and posts one uplink of
// dev-drain, whose handling is then held in s.publish.
func drainServer(t *testing.T, s *stallStream, drain time.Duration) (*dtls.Server, *ingest.Metrics) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := dtls.NewMetrics(reg)
	h := &ingest.Handler{Stream: s, Logger: discard, Metrics: ingest.NewMetrics(reg)}
	srv, err := dtls.Listen("127.0.0.1:0", h, dtls.Config{
		Keys: dtls.NewKeyCache(staticKeys{}, dtls.KeyCacheConfig{}, m, discard), Metrics: m, Logger: discard, Drain: drain,
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = srv.Serve(); close(served) }()
	t.Cleanup(func() { srv.Stop(); waitOr(t, served, "Serve to return") })

	cc, _, err := dialGo(t, udpSocket(t), srv.Addr(), "dev-drain", drainKey, true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(&nbiotv1.Uplink{DeviceId: "dev-drain", UplinkCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Its answer is dropped with the session: the post ends with the test.
	ctx, cancel := context.WithCancel(context.Background())
	posted := make(chan struct{})
	go func() { _, _ = cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b)); close(posted) }()
	t.Cleanup(func() { cancel(); waitOr(t, posted, "the post to end") })
	return srv, h.Metrics
}

// stop runs srv.Stop and, as it returns, reads what its caller looks at
// then (app's Shutdown flushes the stream right after).
func stop(srv *dtls.Server, atStop func()) <-chan struct{} {
	stopped := make(chan struct{})
	go func() { srv.Stop(); atStop(); close(stopped) }()
	return stopped
}

// Stop returns after the uplink being handled has logged its entry, so
// that Shutdown's FlushLive sends it instead of the entry failing.
func TestStopWaitsForHandlers(t *testing.T) {
	release := make(chan struct{})
	s := &stallStream{entered: make(chan struct{}, 1), publish: func(context.Context) error { <-release; return nil }}
	srv, m := drainServer(t, s, 0)
	s.hold(t)
	var accepted, failed float64
	stopped := stop(srv, func() { accepted, failed = testutil.ToFloat64(m.Accepted), testutil.ToFloat64(m.EntriesFailed) })
	// The handler is let go when Stop returns (without the drain) or a
	// little later (Stop waits for it): this only decides when, the order
	// is what is checked.
	select {
	case <-stopped:
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	waitOr(t, stopped, "Stop to return")
	if accepted != 1 || failed != 0 {
		t.Fatalf("when Stop returned: %v accepted, %v entries failed; want the held uplink accepted with its entry", accepted, failed)
	}
}

// Past Drain, Stop ends the context of a handler that waits on the
// stream: it stops waiting (5.03) and Stop returns.
func TestStopEndsHandlersPastDrain(t *testing.T) {
	s := &stallStream{entered: make(chan struct{}, 1), publish: func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}}
	srv, m := drainServer(t, s, 50*time.Millisecond)
	s.hold(t)
	var refused float64
	var ended error
	stopped := stop(srv, func() { refused, ended = testutil.ToFloat64(m.Rejected("stream_unavailable")), s.ctx.Err() })
	waitOr(t, stopped, "Stop to return past Drain")
	if ended == nil || refused != 1 {
		t.Fatalf("when Stop returned: handler context err %v, %v refused; want it cancelled and the uplink refused", ended, refused)
	}
}
