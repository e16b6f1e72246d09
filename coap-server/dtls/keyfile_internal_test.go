package dtls

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"
)

func TestKeyFileRoundTripAndTamper(t *testing.T) {
	dir := t.TempDir()
	f, err := NewKeyFile(dir, []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{"dev-a": bytes.Repeat([]byte{1}, 16), "dev-b": bytes.Repeat([]byte{2}, 64)}
	if err := f.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := f.Load()
	if err != nil || len(got) != 2 || !bytes.Equal(got["dev-a"], want["dev-a"]) || !bytes.Equal(got["dev-b"], want["dev-b"]) {
		t.Fatalf("Load = %v, %v; want what was saved", got, err)
	}
	b, _ := os.ReadFile(f.path)
	b[len(b)-1] ^= 1
	if err := os.WriteFile(f.path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Load(); err != ErrKeyFileSealed {
		t.Fatalf("Load of a changed file: %v, want ErrKeyFileSealed", err)
	}
}

// FuzzParseKeyFile: whatever the opened plaintext holds, parsing never
// panics and returns only valid identities with keys of 1 to 64 bytes.
func FuzzParseKeyFile(f *testing.F) {
	var seed []byte
	seed = binary.AppendUvarint(seed, 5)
	seed = append(seed, "dev-a"...)
	seed = binary.AppendUvarint(seed, 16)
	seed = append(seed, bytes.Repeat([]byte{7}, 16)...)
	f.Add(seed)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := parseKeyFile(b)
		if err != nil {
			return
		}
		for id, psk := range keys {
			if _, err := ParseIdentity([]byte(id)); err != nil || len(psk) == 0 || len(psk) > maxPSKLen {
				t.Fatalf("parsed %q -> %d bytes", id, len(psk))
			}
		}
	})
}
