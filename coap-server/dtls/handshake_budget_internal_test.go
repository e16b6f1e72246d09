package dtls

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/pion/dtls/v3/pkg/protocol"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// noKeys knows no device: a handshake never completes.
type noKeys struct{}

func (noKeys) LoadPSK(context.Context, string) ([]byte, error) { return nil, ErrUnknownDevice }

// keylessServer serves CoAPS with no device keys and a handshake timeout
// no test reaches: every handshake stalls until its peer's datagrams end it.
func keylessServer(t *testing.T, limits LimitConfig) (*Server, *Metrics) {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	srv, err := Listen("127.0.0.1:0", &ingest.Handler{}, Config{Keys: NewKeyCache(noKeys{}, KeyCacheConfig{}, m, nil),
		Metrics: m, HandshakeTimeout: 10 * time.Minute, Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(srv.Stop)
	return srv, m
}

// clientHelloRecord is a PSK ClientHello record (with cookie, if any).
func clientHelloRecord(t testing.TB, seq uint64, msgSeq uint16, cookie []byte) []byte {
	t.Helper()
	rec := recordlayer.RecordLayer{
		Header: recordlayer.Header{Version: protocol.Version1_2, SequenceNumber: seq},
		Content: &handshake.Handshake{
			Header: handshake.Header{MessageSequence: msgSeq},
			Message: &handshake.MessageClientHello{
				Version:            protocol.Version1_2,
				Random:             handshake.Random{GMTUnixTime: time.Unix(1_800_000_000, 0), RandomBytes: [28]byte{7, 2, 3}},
				Cookie:             cookie,
				CipherSuiteIDs:     []uint16{0xc0a8}, // TLS_PSK_WITH_AES_128_CCM_8
				CompressionMethods: []*protocol.CompressionMethod{{}},
			},
		},
	}
	b, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// heldRecord is an epoch-0 handshake record of size bytes that pion keeps
// whole: a 1-byte fragment of a message that never completes (which its
// fragment buffer counts as 1 byte), then a fragment of message_seq 0,
// already assembled, which it skips but whose bytes stay referenced.
func heldRecord(seq uint64, i, size int) []byte {
	b := make([]byte, size)
	b[0], b[1], b[2] = 22, 0xfe, 0xfd
	for k := range 6 {
		b[5+k] = byte(seq >> (8 * (5 - k)))
	}
	binary.BigEndian.PutUint16(b[11:13], uint16(size-13))
	h := b[13:]
	h[0] = 16 // client_key_exchange, length 2^24-1, message_seq 50, offset 2i, 1 byte
	h[1], h[2], h[3] = 0xff, 0xff, 0xff
	binary.BigEndian.PutUint16(h[4:6], 50)
	off := uint32(2 * i)
	h[6], h[7], h[8] = byte(off>>16), byte(off>>8), byte(off)
	h[11], h[12] = 1, 0xaa
	g := h[13:]
	l := uint32(len(g) - 12)
	g[0] = 16
	g[1], g[2], g[3] = byte((l+1)>>16), byte((l+1)>>8), byte(l+1)
	g[8] = 1 // offset 1 of message_seq 0
	g[9], g[10], g[11] = byte(l>>16), byte(l>>8), byte(l)
	return b
}

// A peer that holds no key but echoed its cookie sent records pion kept
// whole for the handshake timeout, each counted as a byte by pion's own
// caps: 7.6 MiB held per half-open handshake (an audit's measure; 32 per
// address, 1,024 in all, against a 512 MB machine). Past HandshakeBytes
// before its handshake completes the peer is now closed: its slot is
// free at once, not at the timeout, and the closure is counted.
func TestPeerOverHandshakeBytesIsClosed(t *testing.T) {
	srv, m := keylessServer(t, LimitConfig{})
	c := echoCookie(t, srv, "127.0.0.1:0")
	buf := make([]byte, 2048)
	if _, err := c.Read(buf); err != nil { // the ServerHello flight: admitted
		t.Fatal("no ServerHello:", err)
	}
	if srv.InFlight() != 1 {
		t.Fatalf("%d handshakes in flight, want the peer's", srv.InFlight())
	}
	for i := range HandshakeBytes/8000 + 2 {
		if _, err := c.Write(heldRecord(uint64(2+i), i, 8000)); err != nil {
			t.Fatal(err)
		}
	}
	testwait.For(t, "the peer over HandshakeBytes closed", func() bool { return srv.InFlight() == 0 && srv.Peers() == 0 })
	if got := testutil.ToFloat64(m.Refused.WithLabelValues(ErrHandshakeBytes.Error())); got != 1 {
		t.Errorf("refused{handshake_bytes} = %v, want 1", got)
	}
}
