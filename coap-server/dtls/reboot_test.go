package dtls_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
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
	rebootOnTheSameAddress(t, f)
	if got := f.handshakes("ok"); got != 2 {
		t.Errorf("handshakes ok = %v, want 2", got)
	}
	if got := testutil.ToFloat64(f.metrics.SessionsClosed.WithLabelValues("rehello")); got != 1 {
		t.Errorf("sessions closed for a new hello = %v, want 1", got)
	}
}

// rebootOnTheSameAddress has a device send an uplink, forget its session
// and bind the same address and port again, handshake anew and send a
// second uplink; both must be answered 2.04.
func rebootOnTheSameAddress(t *testing.T, f *fixture) {
	t.Helper()
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
}

// TestStopEndsTheSessionAfterARebootOnTheSameAddress: go-coap's DTLS
// server keeps its sessions by remote address, so when the old session of
// a device that rebooted on the same address ends after the new one began,
// it deletes the new one's entry; Stop then never closed the new session,
// and Serve waited for it forever (seen in CI under load). The old
// session's end is held here until the new one has answered. Stop now
// closes every session itself.
func TestStopEndsTheSessionAfterARebootOnTheSameAddress(t *testing.T) {
	f := newFixture(t, nil)
	hold := make(chan struct{})
	var held atomic.Bool
	dtls.HoldSessionClose(f.srv, func() {
		// The end of a session's read loop only: the first one is the old
		// session's, which the new hello cut off.
		if strings.Contains(string(debug.Stack()), "dtls/server.(*Session).Run") && held.CompareAndSwap(false, true) {
			<-hold
		}
	})
	rebootOnTheSameAddress(t, f)
	if !held.Load() {
		t.Fatal("the old session's end was not held")
	}
	close(hold)
	// The old session's goroutine ends after it deleted its entry.
	testwait.ForState(t, "the old session's end", func() (bool, string) {
		n := goroutinesIn("dtls/server.(*Server).serveConnection")
		return n == 1, fmt.Sprint(n, " sessions served")
	})
	// The fixture's cleanup stops the server and fails if Serve does not return.
}

// goroutinesIn counts the goroutines with fn on their stack.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			count++
		}
	}
	return count
}
