package stream

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// smallDisk mounts a tmpfs of size (mount(8) syntax) on a new directory,
// unmounted when the test ends. It needs root, as CI has it.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount a tmpfs of %s (the test runs as root in CI): %v %s", size, err, out)
		}
		t.Skipf("cannot mount a tmpfs (not root?): %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// The defaults fit fly.toml's 1 GB volume (about 950 MiB free): the
// embedded server took three quarters of the free space as its bound and
// refused UPLINKS' 512 MiB after LIVELOG's 256 MiB ("insufficient storage
// resources available"), so coap-server with storage did not start there.
// A disk too small for the bounds is one clear line naming them.
func TestEmbeddedStoreFitsTheVolume(t *testing.T) {
	e, err := Open(context.Background(), Config{DataDir: smallDisk(t, "950m"), Storage: true})
	if err != nil {
		t.Fatalf("defaults on a 950 MiB disk: %v", err)
	}
	for _, name := range []string{LiveLogStream, UplinksStream, AsideStream} {
		if _, err := e.js.Stream(context.Background(), name); err != nil {
			t.Errorf("stream %s: %v", name, err)
		}
	}
	e.Close()

	_, err = Open(context.Background(), Config{DataDir: smallDisk(t, "512m"), Storage: true})
	if err == nil {
		t.Fatal("the default bounds (800 MiB) opened on a 512 MiB disk")
	}
	for _, want := range []string{"DATA_DIR", "UPLINKS_MAX_BYTES 512 MiB", "LIVELOG_MAX_BYTES 256 MiB", "800 MiB", "512 MiB free"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// Lowered to fit, it opens.
	e, err = Open(context.Background(), Config{DataDir: smallDisk(t, "512m"), Storage: true, UplinksBytes: 200 << 20, LiveBytes: 100 << 20})
	if err != nil {
		t.Fatalf("312 MiB of bounds on a 512 MiB disk: %v", err)
	}
	e.Close()
}
