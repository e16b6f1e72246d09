package dtls

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/pion/dtls/v3/pkg/protocol"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
)

// The stateless HelloVerifyRequest (RFC 6347 §4.2.1). The cookie is
//
//	HMAC-SHA256(secret, client IP ‖ port ‖ version ‖ random ‖ session_id ‖ cipher_suites ‖ compression_methods)
//
// truncated to cookieLen bytes: the fields the RFC says a client "MUST use
// the same parameter values" for in its second ClientHello. Extensions are
// left out, as pion's own cookie check leaves them out (a client may change
// them in the retry). Nothing is stored per client: a cookie is checked
// by computing it again, under the current secret or the previous one, so a
// cookie lives between one and two cookieRotation periods.
const (
	cookieLen      = 16
	cookieRotation = 2 * time.Minute
)

// cookieJar holds the two secrets cookies are made with.
type cookieJar struct {
	mu      sync.Mutex
	cur     [32]byte
	prev    [32]byte
	rotated time.Time
	now     func() time.Time
}

func newCookieJar() *cookieJar {
	j := &cookieJar{now: time.Now}
	j.rotate()
	j.rotate()
	return j
}

// rotate draws a new current secret; the current one becomes the previous
// one, so a cookie just handed out stays valid for the next rotation.
func (j *cookieJar) rotate() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.rotateLocked()
}

func (j *cookieJar) rotateLocked() {
	j.prev = j.cur
	if _, err := rand.Read(j.cur[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	j.rotated = j.now()
}

// secrets returns the current and previous secret, rotating first when due.
func (j *cookieJar) secrets() (cur, prev [32]byte) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if since := j.now().Sub(j.rotated); since >= cookieRotation {
		j.rotateLocked()
		if since >= 2*cookieRotation {
			j.rotateLocked() // both stale: neither may verify anything
		}
	}
	return j.cur, j.prev
}

// cookie is the cookie for h from raddr.
func (j *cookieJar) cookie(h clientHello, raddr *net.UDPAddr) []byte {
	cur, _ := j.secrets()
	return cookieMAC(cur[:], h, raddr)
}

// valid reports whether h carries the cookie raddr was given.
func (j *cookieJar) valid(h clientHello, raddr *net.UDPAddr) bool {
	if len(h.cookie) != cookieLen {
		return false
	}
	cur, prev := j.secrets()
	return hmac.Equal(h.cookie, cookieMAC(cur[:], h, raddr)) || hmac.Equal(h.cookie, cookieMAC(prev[:], h, raddr))
}

func cookieMAC(secret []byte, h clientHello, raddr *net.UDPAddr) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(raddr.IP.To16())
	m.Write(binary.BigEndian.AppendUint16(nil, uint16(raddr.Port)))
	m.Write(h.beforeCookie)
	m.Write(h.afterCookie)
	return m.Sum(nil)[:cookieLen]
}

// clientHello is what the demux reads of a ClientHello.
type clientHello struct {
	recordSeq  uint64
	messageSeq uint16
	// beforeCookie is version, random and session_id; afterCookie is
	// cipher_suites and compression_methods (RFC 5246 §7.4.1.2, RFC 6347
	// §4.2.1), each with its length prefix.
	beforeCookie, afterCookie []byte
	cookie                    []byte
}

// random is the hello's ClientHello.random (after the 2-byte version).
func (h clientHello) random() []byte { return h.beforeCookie[2:34] }

// parseClientHello reads the first record of a datagram when it is an
// epoch-0 ClientHello whose first fragment holds the message up to its
// compression methods (a PSK ClientHello is a few hundred bytes; a hello
// fragmented before that is not answered, RFC 6347 §4.2.1 lets a server
// ignore it).
func parseClientHello(b []byte) (clientHello, bool) {
	rh, hh, body, ok := firstHandshake(b)
	if !ok || hh.Type != handshake.TypeClientHello {
		return clientHello{}, false
	}
	h := clientHello{recordSeq: rh.SequenceNumber, messageSeq: hh.MessageSequence}
	i := 2 + 32 // version, random
	if len(body) < i+1 || body[i] > 32 {
		return clientHello{}, false
	}
	i += 1 + int(body[i]) // session_id
	if len(body) < i+1 {
		return clientHello{}, false
	}
	h.beforeCookie = body[:i]
	n := int(body[i])
	if len(body) < i+1+n {
		return clientHello{}, false
	}
	h.cookie = body[i+1 : i+1+n]
	i += 1 + n
	start := i
	if len(body) < i+2 {
		return clientHello{}, false
	}
	n = int(binary.BigEndian.Uint16(body[i:]))
	if n < 2 || n%2 != 0 || len(body) < i+2+n {
		return clientHello{}, false
	}
	i += 2 + n // cipher_suites
	if len(body) < i+1 || body[i] < 1 || len(body) < i+1+int(body[i]) {
		return clientHello{}, false
	}
	i += 1 + int(body[i]) // compression_methods
	h.afterCookie = body[start:i]
	return h, true
}

// firstHandshake returns the first record of a datagram and its handshake
// header when it is an epoch-0 handshake record whose first fragment starts
// at offset 0, with the fragment's body.
func firstHandshake(b []byte) (recordlayer.Header, handshake.Header, []byte, bool) {
	var rh recordlayer.Header
	if len(b) < recordlayer.FixedHeaderSize+handshake.HeaderLength || rh.Unmarshal(b) != nil ||
		rh.ContentType != protocol.ContentTypeHandshake || rh.Epoch != 0 {
		return recordlayer.Header{}, handshake.Header{}, nil, false
	}
	// Unmarshal leaves ContentLen unset: the length is bytes 11-12.
	end := recordlayer.FixedHeaderSize + int(binary.BigEndian.Uint16(b[11:13]))
	if end > len(b) {
		return recordlayer.Header{}, handshake.Header{}, nil, false
	}
	rec := b[recordlayer.FixedHeaderSize:end]
	var hh handshake.Header
	if hh.Unmarshal(rec) != nil || hh.FragmentOffset != 0 {
		return recordlayer.Header{}, handshake.Header{}, nil, false
	}
	body := rec[handshake.HeaderLength:]
	if int(hh.FragmentLength) < len(body) {
		body = body[:hh.FragmentLength]
	}
	return rh, hh, body, true
}

// helloVerifyRequest is the answer to h: its record sequence number is the
// ClientHello's and its version DTLS 1.0 (RFC 6347 §4.2.1), its message_seq
// the ClientHello's, so the client's next hello and the server's next
// message continue from there (third_party/pion-dtls/PATCH.md).
func helloVerifyRequest(h clientHello, cookie []byte) []byte {
	rec := recordlayer.RecordLayer{
		Header: recordlayer.Header{Version: protocol.Version1_0, SequenceNumber: h.recordSeq},
		Content: &handshake.Handshake{
			Header:  handshake.Header{MessageSequence: h.messageSeq},
			Message: &handshake.MessageHelloVerifyRequest{Version: protocol.Version1_0, Cookie: cookie},
		},
	}
	b, err := rec.Marshal()
	if err != nil {
		panic(err) // only a cookie over 255 bytes fails; ours is cookieLen
	}
	return b
}
