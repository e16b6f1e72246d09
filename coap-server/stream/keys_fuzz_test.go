package stream

import (
	"encoding/base64"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// headersMsg is a stored message as keyOf sees it: its headers only (the
// other methods of jetstream.Msg are not called and would panic).
type headersMsg struct {
	jetstream.Msg
	h nats.Header
}

func (m headersMsg) Headers() nats.Header { return m.h }

// FuzzKeyOf feeds keyOf the headers of live-log entries other versions
// wrote (KeyHeader, the Nats-Msg-Id of the version before, or junk): it
// must not panic; it takes the key from KeyHeader when it is set, else
// from an "l" Nats-Msg-Id; a key it returns is the one that header
// encodes, and a header that is IDOf a key always gives it.
func FuzzKeyOf(f *testing.F) {
	key := MsgKey("D1", 7, nil, []byte("payload"))
	id := IDOf(key)
	if got, ok := keyOf(headersMsg{h: nats.Header{KeyHeader: {id}}}); !ok || got != key {
		f.Fatalf("KeyHeader %s: %x, %v; want %x", id, got, ok, key)
	}
	f.Add(id, "")
	f.Add("", "l"+id)               // the version before
	f.Add(id, "l"+IDOf([16]byte{})) // both: KeyHeader wins
	f.Add("", id)                   // a Nats-Msg-Id without the "l"
	f.Add("", "u"+id)               // another prefix: not a live-log entry's
	f.Add("short", "")
	f.Add(id+"AA", "")
	f.Add(id[:21]+"!", "")
	f.Add("", "l")
	f.Add("00\n0000000000000000000A", "") // found by CI's fuzzing: the oracle's, not keyOf's
	f.Add("", "")
	f.Fuzz(func(t *testing.T, keyHeader, msgID string) {
		h := nats.Header{}
		if keyHeader != "" {
			h[KeyHeader] = []string{keyHeader}
		}
		if msgID != "" {
			h[jetstream.MsgIDHeader] = []string{msgID}
		}
		got, ok := keyOf(headersMsg{h: h})
		s := keyHeader
		if s == "" && len(msgID) > 1 && msgID[0] == 'l' {
			s = msgID[1:]
		}
		// IDOf writes canonical base64url; a canonical 22 characters are
		// a key, and must be read. (The decoder skips \r and \n even when
		// strict: a header with one is longer than an ID, and no key.)
		if want, err := base64.RawURLEncoding.Strict().DecodeString(s); err == nil && len(want) == len(got) && len(s) == len(id) {
			if !ok || string(got[:]) != string(want) {
				t.Fatalf("header %q: %x, %v; want %x", s, got, ok, want)
			}
			return
		}
		// Anything else read as a key differs from IDOf of it at most in
		// the unused low bits of the last character (non-strict decoding).
		if ok && (len(s) != len(IDOf(got)) || s[:len(s)-1] != IDOf(got)[:len(s)-1]) {
			t.Fatalf("header %q read as key %x (IDOf %s)", s, got, IDOf(got))
		}
	})
}
