package dtls

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/pion/dtls/v3/pkg/protocol"
	"github.com/pion/dtls/v3/pkg/protocol/extension"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
)

// helloRecord is a ClientHello datagram as pion marshals one.
func helloRecord(t testing.TB, cookie []byte, exts []extension.Extension) []byte {
	t.Helper()
	rec := recordlayer.RecordLayer{
		Header: recordlayer.Header{Version: protocol.Version1_2, SequenceNumber: 3},
		Content: &handshake.Handshake{
			Header: handshake.Header{MessageSequence: 1},
			Message: &handshake.MessageClientHello{
				Version:            protocol.Version1_2,
				Random:             handshake.Random{RandomBytes: [28]byte{1, 2, 3}},
				SessionID:          []byte{9, 9},
				Cookie:             cookie,
				CipherSuiteIDs:     []uint16{0xc0a8, 0x00a8},
				CompressionMethods: []*protocol.CompressionMethod{{}},
				Extensions:         exts,
			},
		},
	}
	b, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCookie(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	j := &cookieJar{now: func() time.Time { return now }}
	j.rotate()
	j.rotate()
	addr := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 5000}
	parse := func(b []byte) clientHello {
		t.Helper()
		h, ok := parseClientHello(b)
		if !ok {
			t.Fatalf("parseClientHello refused % x", b)
		}
		return h
	}
	first := parse(helloRecord(t, nil, nil))
	if first.recordSeq != 3 || first.messageSeq != 1 || len(first.cookie) != 0 {
		t.Fatalf("parsed %+v", first)
	}
	c := j.cookie(first, addr)
	retry := parse(helloRecord(t, c, []extension.Extension{&extension.UseExtendedMasterSecret{Supported: true}}))
	if !bytes.Equal(retry.cookie, c) {
		t.Fatalf("cookie read back as % x, want % x", retry.cookie, c)
	}
	if !j.valid(retry, addr) {
		t.Error("the cookie handed out does not verify (extensions may change in the retry)")
	}
	if j.valid(retry, &net.UDPAddr{IP: addr.IP, Port: 5001}) {
		t.Error("cookie verifies from another port")
	}
	if j.valid(retry, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 8), Port: 5000}) {
		t.Error("cookie verifies from another address")
	}
	other := helloRecord(t, c, nil)
	other[13+12+2+4]++ // a byte of the random
	if j.valid(parse(other), addr) {
		t.Error("cookie verifies for another ClientHello random")
	}
	now = now.Add(cookieRotation)
	if !j.valid(retry, addr) {
		t.Error("cookie no longer verifies after one rotation")
	}
	now = now.Add(cookieRotation)
	if j.valid(retry, addr) {
		t.Error("cookie still verifies after two rotations")
	}
	c = j.cookie(first, addr)
	now = now.Add(5 * cookieRotation) // idle: both secrets replaced at once
	if j.valid(parse(helloRecord(t, c, nil)), addr) {
		t.Error("cookie verifies after a long idle")
	}
}

// FuzzParseClientHello: any datagram either is refused or yields the
// cookie pion itself reads from it, and a HelloVerifyRequest that pion
// reads back with that cookie's replacement.
func FuzzParseClientHello(f *testing.F) {
	f.Add(helloRecord(f, nil, nil))
	f.Add(helloRecord(f, bytes.Repeat([]byte{7}, cookieLen), []extension.Extension{&extension.UseExtendedMasterSecret{Supported: true}}))
	f.Add(helloVerifyRequest(clientHello{}, []byte{1, 2, 3}))
	f.Add([]byte{22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, ok := parseClientHello(b)
		if !ok {
			return
		}
		_, _, body, _ := firstHandshake(b)
		var ch handshake.MessageClientHello
		if ch.Unmarshal(body) == nil && !bytes.Equal(ch.Cookie, h.cookie) {
			t.Fatalf("cookie % x, pion reads % x", h.cookie, ch.Cookie)
		}
		if len(h.beforeCookie) < 35 || len(h.afterCookie) < 3 {
			t.Fatalf("short fields %+v", h)
		}
		hvr := helloVerifyRequest(h, []byte{1, 2, 3, 4})
		var rec recordlayer.RecordLayer
		if err := rec.Unmarshal(hvr); err != nil {
			t.Fatalf("HelloVerifyRequest does not parse: %v", err)
		}
		got, ok := rec.Content.(*handshake.Handshake)
		if !ok || rec.Header.SequenceNumber != h.recordSeq || got.Header.MessageSequence != h.messageSeq {
			t.Fatalf("HelloVerifyRequest %+v for %+v", rec, h)
		}
		if v, ok := got.Message.(*handshake.MessageHelloVerifyRequest); !ok || !bytes.Equal(v.Cookie, []byte{1, 2, 3, 4}) {
			t.Fatalf("HelloVerifyRequest message %+v", got.Message)
		}
	})
}
