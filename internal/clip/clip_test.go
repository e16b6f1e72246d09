package clip_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nbiot-live/nbiot-live/internal/clip"
)

func TestString(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{
		{"", 4, ""},
		{"abcd", 4, "abcd"},
		{"abcde", 4, "abcd…"},
		{"ab€d", 4, "ab…"},  // € is 3 bytes: cut before it, not inside
		{"ab€d", 5, "ab€…"}, // it fits
		{"\xff\xff\xff", 1, "\xff…"},
		{"abc", 0, "…"},
		{"abc", -1, "…"},
	} {
		if got := clip.String(c.s, c.n); got != c.want {
			t.Errorf("String(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
}

// A valid string stays valid: the cut never splits a character.
func TestStringKeepsUTF8(t *testing.T) {
	s := strings.Repeat("é€😀", 50)
	for n := range len(s) + 2 {
		got := clip.String(s, n)
		if !utf8.ValidString(got) {
			t.Fatalf("String(_, %d) = %q: not UTF-8", n, got)
		}
		if len(got) > n+len("…") {
			t.Fatalf("String(_, %d) is %d bytes", n, len(got))
		}
	}
}
