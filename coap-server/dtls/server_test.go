package dtls_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/internal/logtest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func udpSocket(t *testing.T) *net.UDPConn {
	t.Helper()
	s, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// An authenticated device cannot speak for another: 4.03 (contract).
func TestIdentityMismatchIsForbidden(t *testing.T) {
	f := newFixture(t, nil)
	key := []byte("mismatch-key-0123456")
	f.provision(t, "dev-a", key)
	cc, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), "dev-a", key, true)
	if err != nil {
		t.Fatal(err)
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{DeviceId: "dev-b", UplinkCount: 1}); code != codes.Forbidden {
		t.Fatalf("uplink naming another device: %v, want 4.03", code)
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{DeviceId: "dev-a", UplinkCount: 2}); code != codes.Changed {
		t.Fatalf("uplink naming itself: %v, want 2.04", code)
	}
	if n := f.store.Len(); n != 1 {
		t.Errorf("%d enqueued, want 1", n)
	}
}

// A failed handshake is logged with the identity, never the key.
func TestFailedHandshakeLogsIdentityNotKey(t *testing.T) {
	var logs logtest.Buffer
	f := newFixture(t, func(c *dtls.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.HandshakeTimeout = time.Second
	})
	right, wrong := []byte("right-key-ABCDEFGHIJ"), []byte("wrong-key-KLMNOPQRST")
	f.provision(t, "dev-log", right)
	if _, _, err := dialGoWithin(t, udpSocket(t), f.srv.Addr(), "dev-log", wrong, true, 2*time.Second); err == nil {
		// pion's client may finish its side before the server's check.
		t.Log("client handshake returned no error with a wrong key (docs/pitfalls.md#pion-dtls)")
	}
	testwait.For(t, "the failed handshake", func() bool { return f.handshakes("failed") >= 1 }, testwait.Within(10*time.Second))
	out := logs.String()
	if !strings.Contains(out, "dtls handshake failed") || !strings.Contains(out, "device=dev-log") {
		t.Errorf("log does not name the device:\n%s", out)
	}
	for _, secret := range [][]byte{right, wrong} {
		if strings.Contains(out, string(secret)) || strings.Contains(out, strings.ToLower(string(secret))) {
			t.Errorf("log contains a key:\n%s", out)
		}
	}
}

// Junk handshakes beyond the per-IP rate are refused before pion works on
// them, and counted.
func TestHandshakeRateLimitPerIP(t *testing.T) {
	f := newFixture(t, func(c *dtls.Config) {
		c.Limits = dtls.LimitConfig{PerIPRate: 0.001, PerIPBurst: 1}
	})
	key := []byte("rate-key-0123456789")
	f.provision(t, "dev-rate", key)
	if _, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), "dev-rate", key, true); err != nil {
		t.Fatalf("first handshake: %v", err)
	}
	// Same IP, another port: over the rate. pion's client retries its
	// ClientHello; each try is refused again, until its own timeout.
	sock := udpSocket(t)
	errc := make(chan error, 1)
	go func() { _, _, err := dialGo(t, sock, f.srv.Addr(), "dev-rate", key, true); errc <- err }()
	refused := func() float64 { return testutil.ToFloat64(f.metrics.Refused.WithLabelValues("per_ip_rate")) }
	testwait.For(t, "a refused handshake", func() bool { return refused() >= 1 }, testwait.Within(10*time.Second))
	_ = sock.Close() // ends the client's handshake
	if err := <-errc; err == nil {
		t.Fatal("second handshake succeeded over the rate limit")
	}
	if ok := f.handshakes("ok"); ok != 1 {
		t.Errorf("handshakes ok = %v, want 1", ok)
	}
	if n := f.srv.InFlight(); n != 0 {
		t.Errorf("%d handshakes still in flight", n)
	}
}

// Over CoAPS as over plain CoAP, a CON with a critical option coap-server
// does not process gets 4.02, counted, and is not taken as an uplink (RFC
// 7252 §5.4.1); a proxy request gets 5.05. Both were stored as uplinks
// over CoAPS, and the 4.02s go-coap sends itself were not counted.
func TestCriticalOptionsOverCoAPS(t *testing.T) {
	f := newFixture(t, nil)
	key := []byte("options-key-01234567")
	f.provision(t, "dev-opt", key)
	cc, _, err := dialGo(t, udpSocket(t), f.srv.Addr(), "dev-opt", key, true)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "dev-opt", UplinkCount: 1})
	for _, tc := range []struct {
		opt  message.Option
		want codes.Code
	}{
		{message.Option{ID: 9, Value: []byte{1}}, codes.BadOption}, // unknown to go-coap (OSCORE's number)
		{message.Option{ID: message.Block2, Value: []byte{0x02}}, codes.BadOption},
		{message.Option{ID: message.ProxyScheme, Value: []byte("coap")}, codes.ProxyingNotSupported},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b), tc.opt)
		cancel()
		if err != nil {
			t.Fatalf("option %v: %v", tc.opt.ID, err)
		}
		if resp.Code() != tc.want {
			t.Errorf("option %v: %v, want %v", tc.opt.ID, resp.Code(), tc.want)
		}
	}
	if n := f.store.Len(); n != 0 {
		t.Errorf("%d uplinks taken, want none", n)
	}
	// Option 9's 4.02 is go-coap's own, before the handler: it is counted
	// with the handler's (Block2's) all the same.
	if n := testutil.ToFloat64(f.handler.Metrics.Rejected("bad_option")); n != 2 {
		t.Errorf("nbiot_uplinks_rejected_total{reason=\"bad_option\"} = %v, want 2", n)
	}
}
