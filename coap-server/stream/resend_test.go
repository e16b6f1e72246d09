package stream

import (
	"context"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/natstest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// With NATS_URL, an accepted uplink whose Log gave up on an entry the
// stream did store (its acknowledgement late or lost) has its entry sent
// once more without waiting. That resend carried no message ID, so the
// live log got the uplink twice; LogAsyncID carries the one Log was given
// and the stream keeps one entry. (Found in an audit; the handler used
// LogAsync.)
func TestResentEntryKeepsItsID(t *testing.T) {
	ns := natstest.Start(t)
	ctx := context.Background()
	e, err := Open(ctx, Config{URL: ns.URL, Storage: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	key := MsgKey("RSND", 7, []byte{1}, []byte("p"))
	entry := livelog.Uplink("RSND", time.Now(), &nbiotv1.Uplink{DeviceId: "RSND", UplinkCount: 7}, nil)
	// The first try, stored although its caller gave up on it.
	if _, _, err := e.Log(ctx, entry, IDOf(key)); err != nil {
		t.Fatal(err)
	}
	e.LogAsyncID(entry, IDOf(key))
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		t.Fatal("the resend was never acknowledged")
	}
	info, err := e.live.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("one uplink, %d live-log entries", info.State.Msgs)
	}
	if n := e.AsyncErrors(); n != 0 {
		t.Errorf("%d async errors", n)
	}
}
