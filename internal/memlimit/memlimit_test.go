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
		{"cgroup v2 limit", 1<<63 - 1, []string{v2set}, 1 << 30, "cgroup"},
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
