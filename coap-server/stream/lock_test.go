package stream

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A second embedded engine on a DATA_DIR in use is refused, naming
// DATA_DIR and the holder; once the first is closed the directory is
// free again. Before the lock, the second started on the same store.
func TestOneEnginePerDataDir(t *testing.T) {
	dir := t.TempDir()
	first, err := Open(context.Background(), Config{DataDir: dir, Storage: true})
	if err != nil {
		t.Fatal(err)
	}
	second, err := Open(context.Background(), Config{DataDir: dir, Storage: true})
	if err == nil {
		second.Close()
		first.Close()
		t.Fatal("a second engine started on a DATA_DIR in use")
	}
	want := "DATA_DIR " + filepath.Clean(dir) + " is in use by another coap-server (pid " + strconv.Itoa(os.Getpid()) + ")"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("refusal: %q\nwant it to start %q", err, want)
	}

	first.Close()
	third, err := Open(context.Background(), Config{DataDir: dir, Storage: true})
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	third.Close()
}

// A directory the lock file cannot be made in is a DATA_DIR error too.
func TestDataDirLockNeedsAWritableDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, lockName), 0o700); err != nil { // a directory where the file goes
		t.Fatal(err)
	}
	e, err := Open(context.Background(), Config{DataDir: dir})
	if err == nil {
		e.Close()
		t.Fatal("started without its lock")
	}
	if !strings.HasPrefix(err.Error(), "DATA_DIR: ") {
		t.Errorf("error %q does not name DATA_DIR", err)
	}
}
