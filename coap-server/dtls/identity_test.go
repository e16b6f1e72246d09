package dtls

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

func TestParseIdentity(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"ABC123", true}, {"dev_1-x", true}, {string(bytes.Repeat([]byte("a"), 64)), true},
		{"", false}, {string(bytes.Repeat([]byte("a"), 65)), false}, {"a b", false},
		{"dev\x00", false}, {"dév", false}, {"../etc", false},
	} {
		id, err := ParseIdentity([]byte(tc.in))
		if (err == nil) != tc.ok || (tc.ok && id != tc.in) {
			t.Errorf("ParseIdentity(%q) = %q, %v", tc.in, id, err)
		}
	}
}

// FuzzParseIdentity: any bytes a client sends as its PSK identity either
// become a valid device ID, unchanged, or are refused.
func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{"ABC123", "dev-libcoap", "Pion DTLS Client", "", "\xff\xfe", "a\x00b"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		id, err := ParseIdentity(raw)
		if err != nil {
			return
		}
		if id != string(raw) || !livelog.ValidDeviceID(id) {
			t.Fatalf("accepted %q as %q", raw, id)
		}
	})
}

// A malformed key's error names none of its characters: it reaches logs.
func TestDecodeByteaErrorQuotesNoKey(t *testing.T) {
	for _, s := range []string{`\x00zq`, `\x0Q`, `\x001`, `\xK`} {
		_, err := DecodeBytea(s)
		if err == nil {
			t.Fatalf("%q accepted", s)
		}
		for _, c := range []string{"z", "q", "Q", "K", "'"} {
			if strings.Contains(s, c) && strings.Contains(err.Error(), c) {
				t.Errorf("DecodeBytea(%q): %q quotes %q", s, err, c)
			}
		}
	}
}

// FuzzDecodeBytea: PostgREST's bytea text from the network never panics and
// round-trips when accepted.
func FuzzDecodeBytea(f *testing.F) {
	for _, s := range []string{`\x00112233445566778899aabbccddeeff`, `\x`, `\xzz`, `0011`, ``} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeBytea(s)
		if err != nil {
			return
		}
		if len(s) != 2+2*len(b) {
			t.Fatalf("%q decoded to %d bytes", s, len(b))
		}
	})
}
