package dtls

import (
	"errors"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// ErrIdentity is returned for a PSK identity that is not a device ID.
var ErrIdentity = errors.New("dtls: PSK identity is not a valid device ID")

// ParseIdentity turns the PSK identity a client sent in its
// ClientKeyExchange (RFC 4279 §2: up to 2^16-1 bytes of UTF-8, chosen by the
// client) into a device ID. Only identities that are device IDs are
// accepted, so nothing else ever reaches the key store, the logs or the
// database.
func ParseIdentity(raw []byte) (string, error) {
	if len(raw) == 0 || len(raw) > 64 {
		return "", ErrIdentity
	}
	id := string(raw)
	if !livelog.ValidDeviceID(id) {
		return "", ErrIdentity
	}
	return id, nil
}

// stateConn is what Identity needs from a connection: pion's *Conn, or the
// session wrapper around it that the listener hands to go-coap.
type stateConn interface {
	ConnectionState() (piondtls.State, bool)
}

// Identity is the device ID a CoAPS connection authenticated as, for
// ingest.Handler.Secure. It is "" when the connection is not DTLS or the
// handshake did not finish; the server refuses such a request with 4.03
// instead of letting it name any device (see secureHandler).
func Identity(c mux.Conn) string {
	if s, ok := c.NetConn().(*session); ok {
		return s.identity
	}
	sc, ok := c.NetConn().(stateConn)
	if !ok {
		return ""
	}
	st, ok := sc.ConnectionState()
	if !ok {
		return ""
	}
	id, err := ParseIdentity(st.IdentityHint)
	if err != nil {
		return ""
	}
	return id
}
