package app_test

import (
	"bytes"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"google.golang.org/protobuf/proto"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func TestDeviceFiltering(t *testing.T) {
	a := startApp(t, nil)
	wsA := dialWS(t, a, "?deviceId=DEV-A")
	wsB := dialWS(t, a, "?deviceId=DEV-B")
	wsAll := dialWS(t, a, "")
	cc := dialCoAP(t, a)
	for i, dev := range []string{"DEV-A", "DEV-B", "DEV-A", "DEV-C"} {
		if code := post(t, cc, &nbiotv1.Uplink{DeviceId: dev, UplinkCount: uint32(i)}); code != codes.Changed {
			t.Fatalf("post %s: %v", dev, code)
		}
	}
	// DEV-C is the last uplink: once the all-devices subscriber has it,
	// every frame for A and B has been queued too.
	for i, want := range []string{"DEV-A", "DEV-B", "DEV-A", "DEV-C"} {
		if got := readFrame(t, wsAll)["deviceId"]; got != want {
			t.Errorf("all-devices frame %d: %v, want %s", i, got, want)
		}
	}
	for i, want := range []float64{0, 2} {
		m := readFrame(t, wsA)
		if m["deviceId"] != "DEV-A" || m["data"].(map[string]any)["uplink_count"] != want {
			t.Errorf("DEV-A subscriber frame %d: %v", i, m)
		}
	}
	if m := readFrame(t, wsB); m["deviceId"] != "DEV-B" {
		t.Errorf("DEV-B subscriber got %v", m)
	}
	// Nothing else is queued for A or B: the next frame each sees is the
	// marker uplink sent now.
	post(t, cc, &nbiotv1.Uplink{DeviceId: "DEV-A", UplinkCount: 99})
	post(t, cc, &nbiotv1.Uplink{DeviceId: "DEV-B", UplinkCount: 99})
	for name, ws := range map[string]*websocket.Conn{"A": wsA, "B": wsB} {
		if m := readFrame(t, ws); m["data"].(map[string]any)["uplink_count"] != 99.0 {
			t.Errorf("subscriber %s: unexpected frame %v", name, m)
		}
	}
}

// rawCON encodes a confirmable POST /uplink with a fixed message ID and token.
func rawCON(t testing.TB, mid int32, token []byte, payload []byte) []byte {
	t.Helper()
	m := message.Message{
		Code:      codes.POST,
		Token:     token,
		Options:   message.Options{{ID: message.URIPath, Value: []byte("uplink")}},
		Payload:   payload,
		MessageID: mid,
		Type:      message.Confirmable,
	}
	buf := make([]byte, 1500)
	n, err := coder.DefaultCoder.Encode(m, buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// exchange sends datagram and retransmits it, as a device's CON timer
// would (RFC 7252 §4.2, here every 100 ms), until an answer arrives. The
// lean path silently drops a retransmission that arrives while the first
// copy is still being answered (its in-flight set); the next one gets the
// remembered answer. It gives up after 30 s.
func exchange(t testing.TB, conn *net.UDPConn, datagram []byte) []byte {
	t.Helper()
	buf := make([]byte, 1500)
	for range 300 {
		if _, err := conn.Write(datagram); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := conn.Read(buf)
		if err == nil {
			return buf[:n]
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Fatalf("read: %v", err)
		}
	}
	t.Fatal("no answer after 300 retransmissions (30 s)")
	return nil
}

// RFC 7252 §4.5: a retransmitted CON (same message ID from the same
// endpoint) gets the same answer and is processed once.
func TestRetransmittedCONIsProcessedOnce(t *testing.T) {
	a := startApp(t, nil)
	ws := dialWS(t, a, "?deviceId=DUP")
	conn, err := net.DialUDP("udp", nil, a.CoAPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p1, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "DUP", UplinkCount: 1})
	p2, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "DUP", UplinkCount: 2})
	first := rawCON(t, 0x1234, []byte{1, 2, 3, 4}, p1)
	ans1 := exchange(t, conn, first)
	ans2 := exchange(t, conn, first)
	if !bytes.Equal(ans1, ans2) {
		t.Errorf("answers differ:\n%x\n%x", ans1, ans2)
	}
	var m message.Message
	if _, err := coder.DefaultCoder.Decode(ans1, &m); err != nil || m.Code != codes.Changed || m.Type != message.Acknowledgement || m.MessageID != 0x1234 {
		t.Fatalf("answer %v (%v), want ACK 2.04 for mid 0x1234", m.String(), err)
	}
	exchange(t, conn, rawCON(t, 0x1235, []byte{5, 6, 7, 8}, p2))
	// The frame after #1 is #2: the retransmission made no second frame.
	for _, want := range []float64{1, 2} {
		if got := readFrame(t, ws)["data"].(map[string]any)["uplink_count"]; got != want {
			t.Fatalf("frame uplink_count %v, want %v", got, want)
		}
	}
	if n := counter(t, a.Metrics, "nbiot_uplinks_accepted_total", nil); n != 2 {
		t.Errorf("accepted %v uplinks, want 2", n)
	}
}

// Junk from many sockets must leave the server serving.
func TestJunkDatagramsLeaveServerServing(t *testing.T) {
	a := startApp(t, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	valid, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "JUNK", UplinkCount: 7})
	var socks []*net.UDPConn
	for range 20 {
		c, err := net.DialUDP("udp", nil, a.CoAPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		socks = append(socks, c)
	}
	for i := range 10000 {
		var d []byte
		switch i % 4 {
		case 0: // random bytes
			d = make([]byte, rng.IntN(1400))
			for j := range d {
				d[j] = byte(rng.Uint32())
			}
		case 1: // a well-formed CoAP header with a junk payload
			junk := make([]byte, rng.IntN(900))
			for j := range junk {
				junk[j] = byte(rng.Uint32())
			}
			d = rawCON(t, int32(i&0xffff), []byte{byte(i)}, junk)
		case 2: // a valid uplink, truncated
			full := rawCON(t, int32(i&0xffff), []byte{byte(i)}, valid)
			d = full[:rng.IntN(len(full))]
		case 3: // a valid uplink with flipped bits
			d = rawCON(t, int32(i&0xffff), []byte{byte(i)}, valid)
			d[rng.IntN(len(d))] ^= byte(1 << rng.IntN(8))
		}
		_, _ = socks[i%len(socks)].Write(d)
	}
	ws := dialWS(t, a, "?deviceId=OK")
	cc := dialCoAP(t, a)
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "OK", UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("after junk: %v", code)
	}
	if m := readFrame(t, ws); m["deviceId"] != "OK" {
		t.Fatalf("after junk: frame %v", m)
	}
}

// A retransmission from another source port (a NAT rebinding between a CON
// and its retransmission, common on NB-IoT) is a new source endpoint; the
// application-level dedup still answers it the same and processes it
// once.
func TestRetransmissionAfterNATRebindingIsProcessedOnce(t *testing.T) {
	a := startApp(t, nil)
	ws := dialWS(t, a, "?deviceId=NAT")
	p1, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "NAT", UplinkCount: 1})
	p2, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "NAT", UplinkCount: 2})
	con := rawCON(t, 0x4242, []byte{9, 9, 9, 9}, p1)
	var answers [][]byte
	for range 2 { // two sockets: two source ports, one exchange
		conn, err := net.DialUDP("udp", nil, a.CoAPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		answers = append(answers, exchange(t, conn, con))
	}
	if !bytes.Equal(answers[0], answers[1]) {
		t.Errorf("answers differ:\n%x\n%x", answers[0], answers[1])
	}
	conn, err := net.DialUDP("udp", nil, a.CoAPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	exchange(t, conn, rawCON(t, 0x4243, []byte{9, 9, 9, 8}, p2))
	for _, want := range []float64{1, 2} {
		if got := readFrame(t, ws)["data"].(map[string]any)["uplink_count"]; got != want {
			t.Fatalf("frame uplink_count %v, want %v", got, want)
		}
	}
	if n := counter(t, a.Metrics, "nbiot_uplinks_accepted_total", nil); n != 2 {
		t.Errorf("accepted %v uplinks, want 2", n)
	}
	if n := counter(t, a.Metrics, "nbiot_uplinks_duplicate_total", nil); n != 1 {
		t.Errorf("duplicates %v, want 1", n)
	}
}
