package app_test

import (
	"context"
	"testing"
	"time"

	coapapp "github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/natstest"
)

// startNATS runs Debian's nats-server with JetStream (internal/natstest)
// and returns its URL.
func startNATS(t *testing.T) string { return natstest.Start(t).URL }

// startCoAPOn runs a coap-server instance on an external NATS.
func startCoAPOn(t *testing.T, natsURL string) *coapapp.App {
	t.Helper()
	dir := t.TempDir()
	cfg, err := coapapp.FromEnv(func(k string) string {
		return map[string]string{"COAP_ADDR": "127.0.0.1:0", "HTTP_ADDR": "127.0.0.1:0", "WS_TOKEN": wsToken,
			"DATA_DIR": dir, "NATS_URL": natsURL}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	a := coapapp.New(cfg, discard())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCoAP(t, a) }) // Shutdown is idempotent
	return a
}

// TestRelaySwitchesCoAPServerInstances: two coap-server instances on one
// external NATS JetStream; the relay's link to instance A is cut while
// uplinks keep reaching A, and comes back on instance B (a load balancer
// sending it elsewhere). B serves what A published meanwhile, from the
// shared stream: the open browser misses nothing and sees nothing twice.
func TestRelaySwitchesCoAPServerInstances(t *testing.T) {
	natsURL := startNATS(t)
	a := startCoAPOn(t, natsURL)
	b := startCoAPOn(t, natsURL)
	p := newCutProxy(t, a.HTTPAddr().String())
	r := startRelay(t, a, map[string]string{"AUTH_DISABLED": "true", "UPSTREAM_URL": "ws://" + p.addr() + "/ws"}, nil)
	ws := mustDialFrom(t, r, "DEV-S", "tail=100")
	ca, cb := dialCoAP(t, a), dialCoAP(t, b)
	sendUplink(t, ca, "DEV-S", 1)
	sendUplink(t, cb, "DEV-S", 2) // through B, seen on A's /ws
	sendUplink(t, ca, "DEV-S", 3)
	expect(t, ws, "u1 u2 u3")

	p.cut(true)
	expect(t, ws, "lost")
	for i := range 4 {
		sendUplink(t, ca, "DEV-S", uint32(i+4))
	}
	p.retarget(b.HTTPAddr().String())
	p.cut(false)
	expect(t, ws, "restored u4 u5 u6 u7")
	stopCoAP(t, a) // A is gone for good; the link is on B
	sendUplink(t, cb, "DEV-S", 8)
	expect(t, ws, "u8")
	noMore(t, ws)
}
