package sim

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestParseKeys(t *testing.T) {
	good := "# provisioned 2026-11-27\nDEV-1 00112233445566778899aabbccddeeff\n\nDEV-2=0xABCD  # trailing comment\r\nDEV_3\tff\n"
	keys, err := ParseKeys(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	want := []Key{
		{"DEV-1", []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}},
		{"DEV-2", []byte{0xab, 0xcd}},
		{"DEV_3", []byte{0xff}},
	}
	if len(keys) != len(want) {
		t.Fatalf("got %d keys, want %d", len(keys), len(want))
	}
	for i := range want {
		if keys[i].DeviceID != want[i].DeviceID || !bytes.Equal(keys[i].PSK, want[i].PSK) {
			t.Errorf("key %d = %s %x, want %s %x", i, keys[i].DeviceID, keys[i].PSK, want[i].DeviceID, want[i].PSK)
		}
	}

	secret := "deadbeefdeadbeefzz"
	for name, in := range map[string]string{
		"empty":          "# nothing\n",
		"one field":      "DEV-1\n",
		"three fields":   "DEV-1 aa bb\n",
		"bad id":         "DEV/1 aabb\n",
		"bad hex":        "DEV-1 " + secret + "\n",
		"odd hex":        "DEV-1 abc\n",
		"too long key":   "DEV-1 " + strings.Repeat("ab", MaxKeyBytes+1) + "\n",
		"duplicate":      "DEV-1 aa\nDEV-1 bb\n",
		"long line":      "DEV-1 " + strings.Repeat("a", 5000) + "\n",
		"too many bytes": strings.Repeat("# padding padding padding padding padding padding\n", 30000),
	} {
		_, err := ParseKeys(strings.NewReader(in))
		if !errors.Is(err, ErrKeyFile) {
			t.Errorf("%s: err %v, want ErrKeyFile", name, err)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("%s: error %q shows the key", name, err)
		}
	}
}

func FuzzParseKeys(f *testing.F) {
	f.Add([]byte("DEV-1 00112233445566778899aabbccddeeff\n"))
	f.Add([]byte("# c\nA=0xff\r\nB\tab # x\n"))
	f.Add([]byte("DEV-1 aa\nDEV-1 bb\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := ParseKeys(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrKeyFile) {
				t.Fatalf("error %v does not wrap ErrKeyFile", err)
			}
			return
		}
		if len(keys) == 0 || len(keys) > MaxKeys {
			t.Fatalf("%d keys", len(keys))
		}
		for _, k := range keys {
			if k.DeviceID == "" || len(k.PSK) == 0 || len(k.PSK) > MaxKeyBytes {
				t.Fatalf("bad key %q (%d bytes)", k.DeviceID, len(k.PSK))
			}
		}
	})
}
