package dtls_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
)

// record is what the tests read of a handshake datagram from the server:
// the first record's sequence number, its handshake message type and
// message_seq, and the cookie when it is a HelloVerifyRequest.
type record struct {
	recordSeq  uint64
	msgType    byte
	messageSeq uint16
	cookie     []byte
}

func readRecord(t testing.TB, sock *net.UDPConn) record {
	t.Helper()
	buf := make([]byte, 2048)
	// A bound on a lost answer, not a synchronization: the server answers at once.
	_ = sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := sock.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("no answer from the server: %v", err)
	}
	b := buf[:n]
	if n < 25 || b[0] != 22 || binary.BigEndian.Uint16(b[3:5]) != 0 {
		t.Fatalf("answer is not an epoch-0 handshake record: % x", b)
	}
	r := record{
		recordSeq:  uint64(binary.BigEndian.Uint16(b[5:7]))<<32 | uint64(binary.BigEndian.Uint32(b[7:11])),
		msgType:    b[13],
		messageSeq: binary.BigEndian.Uint16(b[17:19]),
	}
	if r.msgType == 3 { // hello_verify_request: version, cookie<0..255>
		if n < 28 || n < 28+int(b[27]) {
			t.Fatalf("short HelloVerifyRequest: % x", b)
		}
		r.cookie = bytes.Clone(b[28 : 28+int(b[27])])
	}
	return r
}

// withCookie is hello (a cookie-less ClientHello, one record, message_seq
// 0) as the client's retry carries it: the cookie inserted after the
// session_id, message_seq 1, the next record sequence number.
func withCookie(t testing.TB, hello, cookie []byte, recordSeq uint64) []byte {
	t.Helper()
	const rec, hs = 13, 12
	body := hello[rec+hs:]
	at := 2 + 32 + 1 + int(body[34]) // version, random, session_id
	if body[at] != 0 {
		t.Fatalf("hello already carries a cookie")
	}
	nb := append(append(append([]byte{}, body[:at]...), byte(len(cookie))), cookie...)
	nb = append(nb, body[at+1:]...)
	out := append([]byte{}, hello[:rec+hs]...)
	binary.BigEndian.PutUint16(out[5:7], uint16(recordSeq>>32))
	binary.BigEndian.PutUint32(out[7:11], uint32(recordSeq))
	binary.BigEndian.PutUint16(out[11:13], uint16(hs+len(nb)))
	putUint24 := func(b []byte, v int) { b[0], b[1], b[2] = byte(v>>16), byte(v>>8), byte(v) }
	putUint24(out[rec+1:], len(nb))            // length
	binary.BigEndian.PutUint16(out[rec+4:], 1) // message_seq
	putUint24(out[rec+9:], len(nb))            // fragment_length
	return append(out, nb...)
}

// A flood of cookie-less ClientHellos from many addresses is answered
// without keeping anything: no peer, no handshake slot, no goroutine per
// hello. (Before the stateless HelloVerifyRequest each left a pion conn
// and its goroutines behind for 5 s.)
func TestSpoofedHellosLeaveNoState(t *testing.T) {
	f := newFixture(t, nil)
	hello := clientHello(t)
	const n = 1000
	runtime.GC()
	goroutines := runtime.NumGoroutine()
	for i := range n {
		// Each from its own loopback address, as a spoofed flood would be;
		// the socket stays open just long enough to read the answer.
		s, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 2, byte(i>>8), byte(1+i%250))})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.WriteToUDP(hello, f.srv.Addr()); err != nil {
			t.Fatal(err)
		}
		r := readRecord(t, s)
		_ = s.Close()
		if r.msgType != 3 || len(r.cookie) != 16 || r.messageSeq != 0 || r.recordSeq != 0 {
			t.Fatalf("hello %d answered with %+v, want a HelloVerifyRequest (16-byte cookie, message_seq 0, record seq 0 as the hello's)", i, r)
		}
	}
	if got := testutil.ToFloat64(f.metrics.HelloVerify.WithLabelValues("none")); got != n {
		t.Errorf("HelloVerifyRequests counted %v, want %d", got, n)
	}
	if p := f.srv.Peers(); p != 0 {
		t.Errorf("%d peers held after %d cookie-less hellos, want 0", p, n)
	}
	if in := f.srv.InFlight(); in != 0 {
		t.Errorf("%d handshakes in flight after %d cookie-less hellos, want 0", in, n)
	}
	// Slack for the runtime's and the fixture's own goroutines; a conn per
	// hello would be thousands.
	if g := runtime.NumGoroutine(); g > goroutines+20 {
		t.Errorf("goroutines %d -> %d after %d cookie-less hellos", goroutines, g, n)
	}
}

// Only a ClientHello echoing the cookie its own address was given, under a
// current secret, is admitted; pion then answers in the numbering the
// client expects after the HelloVerifyRequest (message_seq 1, a record
// sequence number past the HelloVerifyRequest's).
func TestOnlyAValidCookieIsAdmitted(t *testing.T) {
	f := newFixture(t, nil)
	hello := clientHello(t)
	sock := udpSocket(t)
	defer sock.Close()
	cookie := func(s *net.UDPConn) []byte {
		t.Helper()
		if _, err := s.WriteToUDP(hello, f.srv.Addr()); err != nil {
			t.Fatal(err)
		}
		r := readRecord(t, s)
		if r.msgType != 3 {
			t.Fatalf("cookie-less hello answered with message type %d, want a HelloVerifyRequest", r.msgType)
		}
		return r.cookie
	}
	invalid := func() float64 { return testutil.ToFloat64(f.metrics.HelloVerify.WithLabelValues("invalid")) }
	refused := func(what string, retry []byte) {
		t.Helper()
		before := invalid()
		if _, err := sock.WriteToUDP(retry, f.srv.Addr()); err != nil {
			t.Fatal(err)
		}
		r := readRecord(t, sock)
		if r.msgType != 3 || invalid() != before+1 {
			t.Fatalf("%s: answered with message type %d (invalid cookies %v -> %v), want a fresh HelloVerifyRequest", what, r.msgType, before, invalid())
		}
		if p, in := f.srv.Peers(), f.srv.InFlight(); p != 0 || in != 0 {
			t.Fatalf("%s: %d peers, %d in flight, want none", what, p, in)
		}
	}

	forged := cookie(sock)
	forged[0] ^= 1
	refused("forged cookie", withCookie(t, hello, forged, 1))

	other := udpSocket(t)
	defer other.Close()
	refused("another address's cookie", withCookie(t, hello, cookie(other), 1))

	expired := cookie(sock)
	dtls.RotateCookieSecret(f.srv)
	dtls.RotateCookieSecret(f.srv)
	refused("cookie from before two secret rotations", withCookie(t, hello, expired, 1))

	// One rotation: still valid (a client mid-exchange keeps working).
	valid := cookie(sock)
	dtls.RotateCookieSecret(f.srv)
	if _, err := sock.WriteToUDP(withCookie(t, hello, valid, 7), f.srv.Addr()); err != nil {
		t.Fatal(err)
	}
	r := readRecord(t, sock)
	if r.msgType != 2 || r.messageSeq != 1 || r.recordSeq != 7 {
		t.Fatalf("valid cookie answered with %+v, want pion's ServerHello, message_seq 1, record seq 7 (the hello's)", r)
	}
	if p, in := f.srv.Peers(), f.srv.InFlight(); p != 1 || in != 1 {
		t.Errorf("after a valid cookie: %d peers, %d in flight, want 1 and 1", p, in)
	}
}
