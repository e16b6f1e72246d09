package dtls

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// echoCookie sends a ClientHello from a socket on laddr and, once the
// HelloVerifyRequest came, the ClientHello with its cookie.
func echoCookie(t *testing.T, srv *Server, laddr string) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(mustAddrPort(t, laddr)), srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	buf := make([]byte, 2048)
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(clientHelloRecord(t, 0, 0, nil)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal("no HelloVerifyRequest:", err)
	}
	hv := buf[recordlayer.FixedHeaderSize+handshake.HeaderLength : n]
	if _, err := c.Write(clientHelloRecord(t, 1, 1, hv[3:3+int(hv[2])])); err != nil {
		t.Fatal(err)
	}
	return c
}

// startHandshake echoes its cookie from laddr and reports whether the
// server went on with the handshake (sent its ServerHello); the handshake
// then stalls, as a peer holding no key can make it until the timeout.
func startHandshake(t *testing.T, srv *Server, laddr string) bool {
	t.Helper()
	_, err := echoCookie(t, srv, laddr).Read(make([]byte, 2048))
	return err == nil
}

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// With every handshake slot held by one address's stalled handshakes (a
// few addresses holding 32 each fill all 1,024 until the timeout), a
// device from another address still starts its handshake: the oldest of
// the heaviest address's gives way (counted). Shares stay near even: an
// address holding one more than the newcomer keeps its slots. The
// newcomer was refused.
func TestFullHandshakeSlotsMakeRoomForAnotherAddress(t *testing.T) {
	srv, m := keylessServer(t, LimitConfig{InFlight: 3, PerIPInFlight: 3})
	for i := range 3 {
		if !startHandshake(t, srv, "127.0.0.1:0") {
			t.Fatalf("stalled handshake %d not started", i)
		}
	}
	if !startHandshake(t, srv, "127.0.0.2:0") {
		t.Fatal("a device from another address was refused while one address held every slot")
	}
	if n := srv.InFlight(); n != 3 {
		t.Errorf("%d handshakes in flight, want 3 (one gave way)", n)
	}
	if got := testutil.ToFloat64(m.Refused.WithLabelValues(ErrInFlightEvicted.Error())); got != 1 {
		t.Errorf("refused{inflight_evicted} = %v, want 1", got)
	}
	// 127.0.0.1 holds 2, 127.0.0.2 holds 1: a second from 127.0.0.2 would
	// only swap the shares, so it is refused (and waits for a slot).
	echoCookie(t, srv, "127.0.0.2:0")
	testwait.For(t, "the second newcomer refused", func() bool {
		return testutil.ToFloat64(m.Refused.WithLabelValues(ErrInFlight.Error())) == 1
	})
	if got := testutil.ToFloat64(m.Refused.WithLabelValues(ErrInFlightEvicted.Error())); got != 1 {
		t.Errorf("refused{inflight_evicted} = %v after a second newcomer, want still 1", got)
	}
}
