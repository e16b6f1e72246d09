package storagetest

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
)

// Pipeline is the real path from an accepted uplink to a writer: an
// embedded JetStream (UPLINKS, in a temporary DATA_DIR) and a
// storage.Consumer of it.
type Pipeline struct {
	t        testing.TB
	Engine   *stream.Engine
	Consumer *storage.Consumer
	mid      int32
}

// NewPipeline starts a pipeline writing to w; it is closed at cleanup.
func NewPipeline(t testing.TB, w storage.Writer, o storage.Options) *Pipeline {
	t.Helper()
	e, err := stream.Open(context.Background(), stream.Config{DataDir: t.TempDir(), Storage: true})
	if err != nil {
		t.Fatal(err)
	}
	src, err := e.UplinkSource(context.Background(), prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}))
	if err != nil {
		t.Fatal(err)
	}
	p := &Pipeline{t: t, Engine: e, Consumer: storage.NewConsumer(src, w, o)}
	t.Cleanup(func() { p.Close(); e.Close() })
	return p
}

// Publish puts r on the stream as the datagram path does; it returns
// once the stream acknowledged it.
func (p *Pipeline) Publish(r uplink.Accepted) {
	p.t.Helper()
	payload, err := proto.Marshal(r.Uplink)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mid++
	r.Key = stream.MsgKey(r.DeviceID, p.mid, r.ID[:], payload)
	if err := p.Engine.PublishUplink(context.Background(), r, payload); err != nil {
		p.t.Fatal(err)
	}
}

// WaitSettled waits until n uplinks were stored or rejected.
func (p *Pipeline) WaitSettled(n int) {
	p.t.Helper()
	m := p.Consumer.Metrics()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		got := int(testutil.ToFloat64(m.Stored) + testutil.ToFloat64(m.Rejected))
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("settled %d of %d uplinks", got, n)
		}
		time.Sleep(5 * time.Millisecond) // polling a counter: the consumer has no completion signal per uplink
	}
}

// Close stops the consumer (what is unacknowledged stays in the stream).
func (p *Pipeline) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Consumer.Close(ctx); err != nil {
		p.t.Errorf("consumer close: %v", err)
	}
}
