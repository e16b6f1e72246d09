package app_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	coapapp "github.com/nbiot-live/nbiot-live/coap-server/app"
)

// startNATS runs Debian's nats-server with JetStream on a free loopback
// port until the test ends, and returns its URL. Without the binary the
// test is skipped, or fails under CI=true.
func startNATS(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nats-server", "/usr/bin/nats-server"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nats-server not installed (scripts/test.sh installs Debian's package)")
		}
		t.Skip("nats-server not installed (apt-get install nats-server)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	cmd := exec.Command(bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(port)
	eventually(t, "nats-server to accept connections", func() bool {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
	return "nats://" + addr
}

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
