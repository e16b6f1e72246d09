package memlimit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, v string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	v2max, v2set, v1none := write("v2max", "max\n"), write("v2set", "1073741824\n"), write("v1none", "9223372036854771712\n")
	tests := []struct {
		name       string
		goMemLimit int64
		files      []string
		want       int64
		from       string
	}{
		{"GOMEMLIMIT wins", 256 << 20, []string{v2set}, 256 << 20, "GOMEMLIMIT"},
		{"cgroup v2 limit: its share", 1<<63 - 1, []string{v2set}, 1 << 30 / 5 * 4, "cgroup"},
		{"unlimited cgroups: the reference machine", 1<<63 - 1, []string{v2max, v1none, filepath.Join(dir, "absent")}, Reference, "reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, from := read(tt.goMemLimit, tt.files)
			if got != tt.want || from != tt.from {
				t.Fatalf("read = %d (%s), want %d (%s)", got, from, tt.want, tt.from)
			}
		})
	}
}

// TestApplySetsTheRuntimeLimitFromACgroup: a container limit with no
// GOMEMLIMIT becomes the runtime's soft limit; GOMEMLIMIT and the
// reference machine leave the runtime as it is.
func TestApplySetsTheRuntimeLimitFromACgroup(t *testing.T) {
	for _, tt := range []struct {
		p    limit
		want int64 // -1: not set
	}{
		{limit{400 << 20, "cgroup"}, 400 << 20},
		{limit{256 << 20, "GOMEMLIMIT"}, -1},
		{limit{Reference, "reference"}, -1},
	} {
		got := int64(-1)
		b, from := apply(tt.p, func(v int64) { got = v })
		if got != tt.want || b != tt.p.bytes || from != tt.p.from {
			t.Errorf("apply(%v): set %d, returned %d (%s); want set %d", tt.p, got, b, from, tt.want)
		}
	}
}
