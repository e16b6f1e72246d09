package dtls

import (
	"bytes"
	"testing"

	"github.com/pion/dtls/v3/pkg/protocol"
	"github.com/pion/dtls/v3/pkg/protocol/extension"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
)

// cidRecord is a DTLS 1.2 record of content type tls12_cid (RFC 9146 §4):
// type, version, epoch, sequence number, the CID, length, payload.
func cidRecord(cid []byte, payload []byte) []byte {
	b := []byte{25, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 7}
	b = append(b, cid...)
	b = append(b, byte(len(payload)>>8), byte(len(payload)))
	return append(b, payload...)
}

// FuzzRouteCID feeds arbitrary datagrams to the CID router of incoming
// CoAPS datagrams (anyone can send them): it must not panic, and a CID it
// returns has the configured length and is one the datagram carries.
func FuzzRouteCID(f *testing.F) {
	cid := bytes.Repeat([]byte{0xa5}, CIDLength)
	if id, ok := routeCID(cidRecord(cid, []byte{1, 2, 3, 4}), CIDLength); !ok || id != string(cid) {
		f.Fatalf("a record with CID %x: %x, %v", cid, id, ok)
	}
	f.Add(cidRecord(cid, []byte{1, 2, 3, 4}))
	f.Add(append(cidRecord(cid, []byte{1}), cidRecord(cid, []byte{2})...))
	f.Add([]byte{22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0}) // a handshake record
	f.Add(cidRecord(cid[:CIDLength-1], nil))                       // CID too short
	f.Fuzz(func(t *testing.T, b []byte) {
		id, ok := routeCID(b, CIDLength)
		if !ok {
			return
		}
		if len(id) != CIDLength || !bytes.Contains(b, []byte(id)) {
			t.Fatalf("CID %x not one of %x", id, b)
		}
	})
}

// FuzzServerHelloCID feeds arbitrary datagrams to the reader of the CID
// a ServerHello going out grants (pion writes those, but a reader of
// bytes is fuzzed all the same): it must not panic, and a CID it returns
// is in the datagram.
func FuzzServerHelloCID(f *testing.F) {
	cid := bytes.Repeat([]byte{0x5a}, CIDLength)
	hello := serverHello(f, cid)
	if id, ok := serverHelloCID(hello); !ok || id != string(cid) {
		f.Fatalf("a ServerHello granting %x: %x, %v", cid, id, ok)
	}
	f.Add(hello)
	f.Add([]byte{22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 2, 0, 0, 0})
	f.Add(cidRecord(bytes.Repeat([]byte{1}, CIDLength), []byte{2, 0, 0, 0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, ok := serverHelloCID(b)
		if ok && !bytes.Contains(b, []byte(id)) {
			t.Fatalf("CID %x not in %x", id, b)
		}
	})
}

// serverHello is a ServerHello record granting cid, as pion writes one.
func serverHello(t testing.TB, cid []byte) []byte {
	t.Helper()
	suite := uint16(0xc0a8) // TLS_PSK_WITH_AES_128_CCM_8
	r := recordlayer.RecordLayer{
		Header: recordlayer.Header{Version: protocol.Version1_2},
		Content: &handshake.Handshake{Message: &handshake.MessageServerHello{
			Version: protocol.Version1_2, CipherSuiteID: &suite, CompressionMethod: protocol.CompressionMethods()[0],
			Extensions: []extension.Extension{&extension.ConnectionID{CID: cid}},
		}},
	}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
