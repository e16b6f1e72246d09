package sim_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapNet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/scripts/simulate/sim"
)

const token = "sim-test-token-0123456789"

// startServer runs the real coap-server in-process on loopback port 0.
func startServer(t *testing.T) *app.App {
	t.Helper()
	cfg, err := app.FromEnv(func(k string) string {
		return map[string]string{"COAP_ADDR": "127.0.0.1:0", "HTTP_ADDR": "127.0.0.1:0", "WS_TOKEN": token}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Stream.DataDir = t.TempDir()
	a := app.New(cfg, slog.New(slog.DiscardHandler))
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return a
}

func wsURL(a *app.App) string { return "ws://" + a.HTTPAddr().String() + "/ws" }

// TestEverySendAnsweredAndStreamed runs the simulator's core against the
// real coap-server: every uplink must be answered 2.04 and come back as a
// live-log frame on /ws.
func TestEverySendAnsweredAndStreamed(t *testing.T) {
	a := startServer(t)
	for _, non := range []bool{false, true} {
		var progress bytes.Buffer
		res, err := sim.Run(context.Background(), sim.Config{
			// 200 frames fit in the server's per-subscriber queue (256), so
			// even a reader starved by a loaded CI machine is never dropped
			// as too slow; FrameWait only bounds a failure, drain returns
			// as soon as the last frame is in.
			Addr: a.CoAPAddr().String(), Devices: 10, Rate: 400, Count: 200, NON: non,
			RebootProb: 0.1, // many restarted uplink_counts: matching must still pair them
			WSURL:      wsURL(a), WSToken: token, Seed: 7, FrameWait: 10 * time.Second,
			Progress: &progress, ProgressEvery: 200 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		var summary bytes.Buffer
		res.Print(&summary)
		if res.Sent != 200 || res.Answered != 200 || res.ByCode["2.04"] != 200 || res.Errors != 0 || res.Timeouts != 0 {
			t.Errorf("NON=%v: want 200 sent and answered 2.04:\n%s", non, &summary)
		}
		if res.Frames != 200 || res.Missing != 0 || res.Unexpected != 0 || res.WSErr != "" {
			t.Errorf("NON=%v: want 200 frames, none missing:\n%s", non, &summary)
		}
		if res.RTT.N != 200 || res.Latency.N != 200 || res.Latency.P99 <= 0 || res.Latency.Max < res.Latency.P99 {
			t.Errorf("NON=%v: rtt %+v latency %+v", non, res.RTT, res.Latency)
		}
		if !strings.Contains(progress.String(), "sent ") {
			t.Errorf("no progress line in %q", progress.String())
		}
	}
}

// lineWatcher is a Progress writer that signals once a line satisfies ok.
type lineWatcher struct {
	mu   sync.Mutex
	ok   func(string) bool
	hit  chan struct{}
	once sync.Once
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ok(string(p)) {
		w.once.Do(func() { close(w.hit) })
	}
	return len(p), nil
}

// TestUntilCancelled is the quick start's mode (-devices 3 -rate 2
// -duration 0): it runs until its context ends, then reports.
func TestUntilCancelled(t *testing.T) {
	a := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &lineWatcher{hit: make(chan struct{}), ok: func(l string) bool {
		return strings.Contains(l, "answered 3 ") || strings.Contains(l, "answered 4 ")
	}}
	done := make(chan struct{})
	var res *sim.Result
	var err error
	go func() {
		defer close(done)
		res, err = sim.Run(ctx, sim.Config{Addr: a.CoAPAddr().String(), Devices: 3, Rate: 2, Progress: w,
			ProgressEvery: 100 * time.Millisecond})
	}()
	select {
	case <-w.hit:
	case <-done:
		t.Fatalf("Run returned before it was cancelled: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no progress line with 3 answers within 30 s")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if err != nil || res.Sent < 3 || res.Answered != res.Sent {
		t.Fatalf("err %v, result %+v", err, res)
	}
}

// TestServerAbsent: nothing listens, so every send fails or times out, and
// the run still ends on its count.
func TestServerAbsent(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	_ = pc.Close() // the port is now closed: ICMP port unreachable, or silence
	res, err := sim.Run(context.Background(), sim.Config{Addr: addr, Devices: 2, Rate: 50, Count: 6,
		Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 6 || res.Answered != 0 || res.Errors+res.Timeouts != 6 {
		t.Fatalf("sent %d answered %d errors %d timeouts %d", res.Sent, res.Answered, res.Errors, res.Timeouts)
	}
}

func TestWSUnauthorized(t *testing.T) {
	a := startServer(t)
	_, err := sim.Run(context.Background(), sim.Config{Addr: a.CoAPAddr().String(), Devices: 1, Rate: 1, Count: 1,
		WSURL: wsURL(a), WSToken: "wrong-token-wrong-token"})
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("err %v, want a 401", err)
	}
	if strings.Contains(err.Error(), "wrong-token") {
		t.Fatalf("error %q shows the token", err)
	}
}

func TestConfigErrors(t *testing.T) {
	ok := sim.Config{Addr: "127.0.0.1:1", Devices: 1, Rate: 1, Count: 1}
	for name, mutate := range map[string]func(*sim.Config){
		"no addr":          func(c *sim.Config) { c.Addr = "" },
		"no devices":       func(c *sim.Config) { c.Devices = 0 },
		"too many devices": func(c *sim.Config) { c.Devices = sim.MaxDevices + 1 },
		"zero rate":        func(c *sim.Config) { c.Rate = 0 },
		"huge rate":        func(c *sim.Config) { c.Rate = sim.MaxRate + 1 },
		"negative count":   func(c *sim.Config) { c.Count = -1 },
		"bad prefix":       func(c *sim.Config) { c.Prefix = "a/b" },
		"long prefix":      func(c *sim.Config) { c.Prefix = strings.Repeat("x", 60) },
		"http ws url":      func(c *sim.Config) { c.WSURL = "http://x/ws"; c.WSToken = "t" },
		"ws without token": func(c *sim.Config) { c.WSURL = "ws://x/ws" },
		"reboot prob > 1":  func(c *sim.Config) { c.RebootProb = 2 },
		"more devices than keys": func(c *sim.Config) {
			c.Keys = []sim.Key{{DeviceID: "A", PSK: []byte{1}}}
			c.Devices = 2
		},
	} {
		c := ok
		mutate(&c)
		if _, err := sim.Run(context.Background(), c); !errors.Is(err, sim.ErrConfig) {
			t.Errorf("%s: err %v, want ErrConfig", name, err)
		}
	}
}

// TestDTLS drives the simulator's CoAPS path against go-coap's DTLS server
// with pion PSK (coap-server's own CoAPS listener is tested in
// coap-server/dtls): right keys are answered, a wrong key fails the run at
// its explicit handshake instead of at the first request.
func TestDTLS(t *testing.T) {
	keys := map[string][]byte{"DTLS-1": []byte("0123456789abcdef"), "DTLS-2": []byte("fedcba9876543210")}
	var mu sync.Mutex
	got := map[string]int{}
	handler := mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) {
		state, _ := w.Conn().NetConn().(*piondtls.Conn).ConnectionState()
		id := string(state.IdentityHint)
		mu.Lock()
		got[id]++
		mu.Unlock()
		_ = w.SetResponse(codes.Changed, message.AppOctets, nil)
	})
	ln, err := coapNetDTLS(keys)
	if err != nil {
		t.Fatal(err)
	}
	srv := coapdtls.NewServer(options.WithMux(handler))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	res, err := sim.Run(context.Background(), sim.Config{Addr: ln.Addr().String(), Rate: 100, Count: 10,
		Keys: []sim.Key{{DeviceID: "DTLS-1", PSK: keys["DTLS-1"]}, {DeviceID: "DTLS-2", PSK: keys["DTLS-2"]}}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Devices != 2 || res.Answered != 10 || res.ByCode["2.04"] != 10 || !strings.Contains(res.Mode, "DTLS") {
		t.Fatalf("result %+v", res)
	}
	mu.Lock()
	if got["DTLS-1"] != 5 || got["DTLS-2"] != 5 {
		t.Errorf("server saw identities %v, want 5 each", got)
	}
	mu.Unlock()

	_, err = sim.Run(context.Background(), sim.Config{Addr: ln.Addr().String(), Rate: 100, Count: 1, Timeout: 2 * time.Second,
		Keys: []sim.Key{{DeviceID: "DTLS-1", PSK: []byte("wrong key, wrong")}}})
	if err == nil || !strings.Contains(err.Error(), "handshake") {
		t.Fatalf("wrong key: err %v, want a handshake error", err)
	}
	if strings.Contains(err.Error(), "wrong key") {
		t.Fatalf("error %q shows the key", err)
	}
}

var _ io.Writer = (*lineWatcher)(nil)

// coapNetDTLS listens for DTLS 1.2 PSK on loopback; the PSK callback gets
// the client's identity (docs/pitfalls.md#pion-dtls) and refuses unknown ones.
func coapNetDTLS(keys map[string][]byte) (*coapNet.DTLSListener, error) {
	return coapNet.NewDTLSListener("udp", "127.0.0.1:0", coapNet.NewDTLSServerOptions(
		piondtls.WithPSK(func(identity []byte) ([]byte, error) {
			if k, ok := keys[string(identity)]; ok {
				return k, nil
			}
			return nil, errors.New("unknown identity")
		}),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
		piondtls.WithConnectionIDGenerator(piondtls.RandomCIDGenerator(8)),
	))
}
