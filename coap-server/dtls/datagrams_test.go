package dtls_test

import (
	"bytes"
	"testing"
	"time"

	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func (f *fixture) datagrams(outcome string) float64 {
	return testutil.ToFloat64(f.metrics.Datagrams.WithLabelValues(outcome))
}

// Datagrams that are not a ClientHello, from an address and a Connection
// ID the server holds no peer for, are dropped and counted; the server
// still serves a device after them. They were dropped uncounted.
func TestDatagramsWithoutSessionAreCounted(t *testing.T) {
	f := newFixture(t, nil)
	key := []byte("junk-key-0123456789a")
	f.provision(t, "dev-junk", key)
	sock := udpSocket(t)
	cidRecord := append([]byte{25, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 7}, bytes.Repeat([]byte{0xa5}, 8)...)
	junk := [][]byte{
		[]byte("not DTLS at all"),
		{23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4}, // application data of a session the server does not hold
		append(cidRecord, 0, 4, 1, 2, 3, 4),                        // a record with a CID no peer has
	}
	for _, b := range junk {
		if _, err := sock.WriteTo(b, f.srv.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	// The same socket handshakes after the junk: the demux reads datagrams
	// in order, so by the end of the handshake it has dispatched the junk.
	cc, _, err := dialGo(t, sock, f.srv.Addr(), "dev-junk", key, true)
	if err != nil {
		t.Fatalf("handshake after junk: %v", err)
	}
	if n := f.datagrams("no_session"); n != float64(len(junk)) {
		t.Errorf("nbiot_dtls_datagrams_total{outcome=\"no_session\"} = %v, want %d", n, len(junk))
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{DeviceId: "dev-junk", UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("uplink after junk: %v, want 2.04", code)
	}
}

// Inside a session, go-coap drops what is not a CoAP message before our
// handler sees it, answering a CON whose header it read with RST (RFC 7252
// §4.2); each is counted as malformed, and the session goes on serving.
// They were counted nowhere.
func TestMalformedCoAPInSessionIsCounted(t *testing.T) {
	f := newFixture(t, nil)
	key := []byte("malformed-key-012345")
	f.provision(t, "dev-malformed", key)
	dc, err := dialPion(udpSocket(t), f.srv.Addr(), "dev-malformed", key, true, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The client is done when it reads the server's Finished; the server a
	// moment later, and until then pion keeps one early record and drops the
	// rest (docs/pitfalls.md#pion-dtls). Write once the server is done too.
	testwait.For(t, "the server's end of the session established", func() bool {
		return testutil.ToFloat64(f.metrics.Sessions) == 1
	})
	for _, b := range [][]byte{
		{0x80, 0x02, 0x12, 0x33},       // CoAP version 2: ignored (§3)
		{0x50, 0x02, 0x12, 0x34, 0xff}, // a NON whose payload marker has no payload (§3): ignored (§4.3)
		{0x40, 0x02, 0x12, 0x35, 0xff}, // the same in a CON: rejected with RST
	} {
		if _, err := dc.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	// go-coap reads a session's records in order, and the RST answers the
	// last: by then all three were read.
	_ = dc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, err := dc.Read(buf)
	if err != nil {
		t.Fatalf("no answer to the malformed CON: %v", err)
	}
	if rst := []byte{0x70, 0x00, 0x12, 0x35}; !bytes.Equal(buf[:n], rst) {
		t.Fatalf("answer % x, want the RST % x", buf[:n], rst)
	}
	if n := f.datagrams("malformed"); n != 3 {
		t.Errorf("nbiot_dtls_datagrams_total{outcome=\"malformed\"} = %v, want 3", n)
	}
	_ = dc.SetReadDeadline(time.Time{})
	cc := coapdtls.Client(dc)
	t.Cleanup(func() { _ = cc.Close() })
	if code := postGo(t, cc, &nbiotv1.Uplink{DeviceId: "dev-malformed", UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("uplink after malformed messages: %v, want 2.04", code)
	}
}
