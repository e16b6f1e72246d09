package dtls

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
)

// decoy makes an unknown identity fail exactly like a wrong key. Instead of
// an error (which pion turns into an immediate internal_error alert) the
// PSK callback returns a key nobody knows, HMAC(secret, identity) with a
// secret drawn at start: the handshake then runs the same code as one with
// a wrong key and ends the same way (pion drops the client's Finished it
// cannot decrypt and the handshake times out, no alert), so a peer cannot
// tell which device IDs exist. The key is stable per identity, so
// retransmissions agree.
type decoy struct{ secret [32]byte }

func newDecoy() *decoy {
	d := &decoy{}
	_, _ = rand.Read(d.secret[:]) // crypto/rand.Read never fails (Go 1.24+)
	return d
}

func (d *decoy) key(identity []byte) []byte {
	m := hmac.New(sha256.New, d.secret[:])
	m.Write(identity)
	return m.Sum(nil)[:16]
}
