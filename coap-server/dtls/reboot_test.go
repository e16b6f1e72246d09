package dtls_test

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// A device that reboots keeps its NAT binding more often than not: its new
// ClientHello comes from the address of its open session, which it has
// forgotten (no close_notify). RFC 6347 §4.2.8: the server answers that
// hello with a HelloVerifyRequest and, once the cookie comes back, starts a
// new association in place of the old one. Without that the hello reached
// the old session, which ignored it until it idled out (hours).
func TestRebootedDeviceOnTheSameAddressHandshakesAgain(t *testing.T) {
	f := newFixture(t, nil)
	key := []byte("reboot-key-01234567")
	f.provision(t, "dev-reboot", key)
	first := udpSocket(t)
	addr := first.LocalAddr().(*net.UDPAddr)
	cc, _, err := dialGo(t, first, f.srv.Addr(), "dev-reboot", key, true)
	if err != nil {
		t.Fatal(err)
	}
	post := func(count uint32) {
		t.Helper()
		b, _ := proto.Marshal(&nbiotv1.Uplink{UplinkCount: count})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
		if err != nil {
			t.Fatalf("uplink %d: %v", count, err)
		}
		if resp.Code() != codes.Changed {
			t.Fatalf("uplink %d: %v", count, resp.Code())
		}
	}
	post(1)
	// The reboot: the socket goes away without a word to the server, and
	// the new firmware run binds the same address and port.
	_ = first.Close()
	again, err := net.ListenUDP("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = again.Close() })
	cc, _, err = dialGoWithin(t, again, f.srv.Addr(), "dev-reboot", key, true, 5*time.Second)
	if err != nil {
		t.Fatalf("handshake after a reboot on the same address: %v", err)
	}
	post(2)
	if got := f.handshakes("ok"); got != 2 {
		t.Errorf("handshakes ok = %v, want 2", got)
	}
	if got := testutil.ToFloat64(f.metrics.SessionsClosed.WithLabelValues("rehello")); got != 1 {
		t.Errorf("sessions closed for a new hello = %v, want 1", got)
	}
}
