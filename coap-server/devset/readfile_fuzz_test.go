package devset

import (
	"os"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// FuzzReadFile feeds readFile arbitrary contents of the list saved under
// DATA_DIR (read at a start while the database is down; the disk or an
// older version may have left anything there): it must not panic, and it
// returns at most MaxIDs IDs, each a valid device ID; when it reads the
// whole file, those are its valid lines in order, none lost.
func FuzzReadFile(f *testing.F) {
	f.Add([]byte("K1\nK2\n"))
	f.Add([]byte("dev-a\r\ndev_b\r\n"))   // CRLF
	f.Add([]byte("dev-a\n\n  \ndev b\n")) // blank lines, a space
	f.Add([]byte("last-line-unterminated"))
	f.Add([]byte(strings.Repeat("x", 65) + "\n" + "ok\n")) // an ID too long
	f.Add([]byte("é\x00\xff\n"))
	f.Add([]byte{})
	// One file per worker, rewritten for each input: a temporary
	// directory per input would cost most of the run.
	s := New(Credentialed, nil, 0, f.TempDir(), nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		overwrite(t, s.file, data)
		ids, err := s.readFile()
		if len(ids) > MaxIDs {
			t.Fatalf("%d IDs, more than MaxIDs", len(ids))
		}
		for _, id := range ids {
			if !livelog.ValidDeviceID(id) {
				t.Fatalf("invalid device ID %q", id)
			}
		}
		if err != nil {
			return // a line past bufio's bound: the list is not used
		}
		var want []string
		for _, line := range strings.SplitAfter(string(data), "\n") {
			line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
			if livelog.ValidDeviceID(line) {
				want = append(want, line)
			}
		}
		if strings.Join(ids, "\n") != strings.Join(want, "\n") {
			t.Fatalf("read %q from %q, want %q", ids, data, want)
		}
	})
}

// overwrite makes data the file's contents without truncating it to zero
// first (os.WriteFile): on ext4 a file truncated to zero is flushed to
// disk when it is closed, which made each input ten times slower.
func overwrite(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Truncate(int64(len(data)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}
