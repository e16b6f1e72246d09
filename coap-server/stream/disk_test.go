package stream

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/proctest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// The defaults fit fly.toml's 1 GB volume (about 950 MiB free): the
// embedded server took three quarters of the free space as its bound and
// refused UPLINKS' 512 MiB after LIVELOG's 256 MiB ("insufficient storage
// resources available"), so coap-server with storage did not start there.
// A disk too small for the bounds is one clear line naming them.
func TestEmbeddedStoreFitsTheVolume(t *testing.T) {
	e, err := Open(context.Background(), Config{DataDir: proctest.SmallDisk(t, "950m"), Storage: true})
	if err != nil {
		t.Fatalf("defaults on a 950 MiB disk: %v", err)
	}
	for _, name := range []string{LiveLogStream, UplinksStream, AsideStream} {
		if _, err := e.js.Stream(context.Background(), name); err != nil {
			t.Errorf("stream %s: %v", name, err)
		}
	}
	e.Close()

	_, err = Open(context.Background(), Config{DataDir: proctest.SmallDisk(t, "512m"), Storage: true})
	if err == nil {
		t.Fatal("the default bounds (800 MiB) opened on a 512 MiB disk")
	}
	for _, want := range []string{"DATA_DIR", "UPLINKS_MAX_BYTES 512 MiB", "LIVELOG_MAX_BYTES 256 MiB", "800 MiB"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// The disk's 512 MiB less DATA_DIR's lock file (a page).
	if !regexp.MustCompile(`\b51[12] MiB free`).MatchString(err.Error()) {
		t.Errorf("error %q does not say the disk has 511 or 512 MiB free", err)
	}
	// Lowered to fit, it opens.
	e, err = Open(context.Background(), Config{DataDir: proctest.SmallDisk(t, "512m"), Storage: true, UplinksBytes: 200 << 20, LiveBytes: 100 << 20})
	if err != nil {
		t.Fatalf("312 MiB of bounds on a 512 MiB disk: %v", err)
	}
	e.Close()
}

// A full disk: nats-server keeps a file store's first write error and
// refuses every write after it, even once there is room again, so the
// embedded engine stayed ready while every uplink got 5.03, each after
// AckTimeout, until someone started the process again (tried by hand:
// freeing the disk changed nothing). Now it is not ready, and it fails
// (Failed): the program exits with the reason, to be started again.
func TestFullDiskFailsTheEngine(t *testing.T) {
	defer func(d time.Duration) { storeStuckAfter = d }(storeStuckAfter)
	storeStuckAfter = time.Second
	dir := proctest.SmallDisk(t, "64m")
	e := openEmbedded(t, Config{DataDir: dir, LiveBytes: 16 << 20, AckTimeout: 200 * time.Millisecond})
	ctx := context.Background()
	a, _ := accepted(t, "FULL", 1)
	if _, _, err := e.Log(ctx, livelog.Uplink("FULL", a.ReceivedAt, a.Uplink, nil), ""); err != nil {
		t.Fatalf("an entry before the disk was full: %v", err)
	}
	proctest.FillDisk(t, dir)
	var failure error
	testwait.For(t, "the engine failed", func() bool {
		_, _, _ = e.Log(ctx, livelog.Uplink("FULL", time.Now(), a.Uplink, nil), "")
		select {
		case failure = <-e.Failed():
			return true
		default:
			return false
		}
	}, testwait.Within(30*time.Second))
	if e.Ready() {
		t.Error("ready with a store that takes no writes")
	}
	if msg := failure.Error(); !strings.Contains(msg, "DATA_DIR "+dir) || !strings.Contains(msg, "takes no writes") {
		t.Errorf("failure %q does not name DATA_DIR and what is wrong", msg)
	}
}
