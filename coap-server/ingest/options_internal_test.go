package ingest

import (
	"net/netip"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// encodeMsg encodes m; its options must be in ascending order (§3.1).
func encodeMsg(t *testing.T, m message.Message) []byte {
	t.Helper()
	b := make([]byte, 2048)
	n, err := coder.DefaultCoder.Encode(m, b)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

func decodeAnswer(t *testing.T, answers [][]byte) message.Message {
	t.Helper()
	if len(answers) != 1 {
		t.Fatalf("%d answers, want 1", len(answers))
	}
	m := message.Message{Options: make(message.Options, 0, 8)}
	if _, err := coder.DefaultCoder.Decode(answers[0], &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// A request with a critical option coap-server does not process is not
// taken as an uplink: RFC 7252 wants 5.05 for a proxy request (§5.7.2),
// 4.12 for a condition that cannot hold (§5.10.8), 4.06 for an Accept it
// cannot meet (§5.10.4), and 4.02 for a critical option it does not
// implement (Block2) or one repeated that is not repeatable (§5.4.5).
// Each was accepted and stored as an uplink.
func TestOptionsNotProcessedAreRefused(t *testing.T) {
	path := message.Option{ID: message.URIPath, Value: []byte("uplink")}
	host := message.Option{ID: message.URIHost, Value: []byte("example.com")}
	for _, tc := range []struct {
		name string
		opts message.Options // ascending
		want codes.Code
	}{
		{"Proxy-Uri", message.Options{{ID: message.ProxyURI, Value: []byte("coap://example.com/uplink")}}, codes.ProxyingNotSupported},
		{"Proxy-Scheme", message.Options{path, {ID: message.ProxyScheme, Value: []byte("coap")}}, codes.ProxyingNotSupported},
		{"If-Match", message.Options{{ID: message.IfMatch, Value: []byte{}}, path}, codes.PreconditionFailed},
		{"If-None-Match", message.Options{{ID: message.IfNoneMatch}, path}, codes.PreconditionFailed},
		{"Accept JSON", message.Options{path, {ID: message.Accept, Value: []byte{50}}}, codes.NotAcceptable},
		{"Block2", message.Options{path, {ID: message.Block2, Value: []byte{0x02}}}, codes.BadOption},
		{"Uri-Host twice", message.Options{host, host, path}, codes.BadOption},
		// What is processed: an uplink.
		{"Accept octet-stream", message.Options{path, {ID: message.Accept, Value: []byte{42}}}, codes.Changed},
		{"Uri-Host and Uri-Port", message.Options{host, {ID: message.URIPort, Value: []byte{0x16, 0x33}}, path}, codes.Changed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := &recStream{}
			h := testHandler(time.Now)
			h.Stream = rs
			sl := newSyncLean(t, h)
			payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "OPTS-1", UplinkCount: 1})
			b := encodeMsg(t, message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 500, Token: []byte{7},
				Options: tc.opts, Payload: payload})
			m := decodeAnswer(t, sl.exchange(b, netip.MustParseAddrPort("192.0.2.5:5000")))
			if m.Type != message.Acknowledgement || m.Code != tc.want {
				t.Fatalf("%v %v, want a piggybacked %v", m.Type, m.Code, tc.want)
			}
			if stored := len(rs.durable); (tc.want == codes.Changed) != (stored == 1) {
				t.Errorf("stored %d uplinks", stored)
			}
		})
	}
}

// A request with more options than the path holds is well formed: a CON
// gets a piggybacked 4.02 with its token, a NON nothing. It got RST, the
// answer to a message format error.
func TestManyOptionsAreBadOptionNotMalformed(t *testing.T) {
	h := testHandler(time.Now)
	sl := newSyncLean(t, h)
	opts := message.Options{{ID: message.URIPath, Value: []byte("uplink")}}
	for range maxOptions + 8 {
		opts = append(opts, message.Option{ID: 2048, Value: []byte{1}}) // elective, unknown
	}
	payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "OPTS-2", UplinkCount: 1})
	req := message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 600, Token: []byte{9, 9}, Options: opts, Payload: payload}
	from := netip.MustParseAddrPort("192.0.2.6:5000")
	m := decodeAnswer(t, sl.exchange(encodeMsg(t, req), from))
	if m.Type != message.Acknowledgement || m.Code != codes.BadOption || m.MessageID != 600 || string(m.Token) != "\x09\x09" {
		t.Fatalf("got %v, want ACK 4.02 with mid 600 and the token", &m)
	}
	req.Type, req.MessageID = message.NonConfirmable, 601
	if answers := sl.exchange(encodeMsg(t, req), from); len(answers) != 0 {
		t.Fatalf("NON: %d answers, want none", len(answers))
	}
}

// An error answer on plain CoAP, whose source anyone can spoof, is at
// most 3 times the request: a short bad request gets its code without
// the diagnostic text (counted); a request large enough keeps it. Short
// requests got answers 5-6 times their size.
func TestShortBadRequestsAreNotAmplified(t *testing.T) {
	h := testHandler(time.Now)
	sl := newSyncLean(t, h)
	from := netip.MustParseAddrPort("192.0.2.8:5000")
	path := message.Option{ID: message.URIPath, Value: []byte("uplink")}
	cf := func(v byte) message.Option { return message.Option{ID: message.ContentFormat, Value: []byte{v}} }
	for i, tc := range []struct {
		name string
		req  message.Message
		want codes.Code
	}{
		{"another path", message.Message{Code: codes.GET, Options: message.Options{{ID: message.URIPath, Value: []byte("x")}}}, codes.NotFound},
		{"another method", message.Message{Code: codes.GET, Options: message.Options{path}}, codes.MethodNotAllowed},
		{"text payload", message.Message{Code: codes.POST, Options: message.Options{path, cf(0)}, Payload: []byte{1}}, codes.UnsupportedMediaType},
		{"unknown critical option", message.Message{Code: codes.POST, Options: message.Options{{ID: 9, Value: []byte{1}}, path}}, codes.BadOption},
		{"proxy", message.Message{Code: codes.POST, Options: message.Options{{ID: message.ProxyURI, Value: []byte("coap://a")}}}, codes.ProxyingNotSupported},
		{"undecodable", message.Message{Code: codes.POST, Options: message.Options{path}, Payload: []byte{0xff}}, codes.BadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Type, tc.req.MessageID = message.Confirmable, int32(700+i)
			b := encodeMsg(t, tc.req)
			answers := sl.exchange(b, from)
			m := decodeAnswer(t, answers)
			if m.Code != tc.want {
				t.Fatalf("%v, want %v", m.Code, tc.want)
			}
			if len(answers[0]) > amplification*len(b) {
				t.Errorf("answer %d bytes to a request of %d: over %d times", len(answers[0]), len(b), amplification)
			}
		})
	}
	if got := testutil.ToFloat64(sl.s.m.shortened); got == 0 {
		t.Error("nbiot_coap_answers_shortened_total = 0")
	}
	// A real uplink's size leaves room for the text.
	payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "AMPLIFY-1", UplinkCount: 1, Config: &nbiotv1.DeviceConfig{FwVersion: "1.2.3", HwVersion: "rev-b"},
		WifiAps: []*nbiotv1.WifiAp{{Bssid: []byte{1, 2, 3, 4, 5, 6}, Rssi: -70}, {Bssid: []byte{1, 2, 3, 4, 5, 7}, Rssi: -80}}})
	b := encodeMsg(t, message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 799, Token: []byte{1, 2, 3, 4},
		Options: message.Options{path, cf(0)}, Payload: payload})
	if m := decodeAnswer(t, sl.exchange(b, from)); m.Code != codes.UnsupportedMediaType || len(m.Payload) == 0 {
		t.Fatalf("%v with %q, want 4.15 with its diagnostic", m.Code, m.Payload)
	}
}

// nbiot_coap_queue_bytes follows the queue down as well as up: zero once
// the queued datagram was answered. It was set only on enqueue, so it
// showed the peak of the last burst for good.
func TestQueueBytesGaugeFallsWhenDrained(t *testing.T) {
	h := testHandler(time.Now)
	sl := newSyncLean(t, h)
	b := conUplink(t, 800, &nbiotv1.Uplink{DeviceId: "GAUGE-1", UplinkCount: 1})
	sl.s.receive(b, netip.MustParseAddrPort("192.0.2.10:5000"))
	if got := testutil.ToFloat64(sl.s.m.queuedBytes); got != float64(datagramBuffer+datagramOverhead) {
		t.Fatalf("queued: gauge %v, want %d", got, datagramBuffer+datagramOverhead)
	}
	d := <-sl.s.queue
	sl.s.dequeued(d)
	sl.ex.serve(d)
	sl.s.leave(d)
	if got := testutil.ToFloat64(sl.s.m.queuedBytes); got != 0 {
		t.Fatalf("answered: gauge %v, want 0", got)
	}
}
