package app_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/nbiot-live/nbiot-live/internal/proctest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// TestFullDiskExitsTheProcess: the coap-server binary on a volume that
// fills up. nats-server keeps its file store's first write error, so
// coap-server stayed up refusing every uplink for good, even once there
// was room again. Now it exits 1 naming DATA_DIR, for the platform to start
// it again; started again with room, it answers 2.04.
func TestFullDiskExitsTheProcess(t *testing.T) {
	dir := proctest.SmallDisk(t, "400m")
	env := map[string]string{"DATA_DIR": filepath.Join(dir, "data")}
	in := startProc(t, env)
	cc := in.dial(t)
	if code := tryPost(cc, &nbiotv1.Uplink{DeviceId: "FULL-1", UplinkCount: 1}, 5*time.Second); code != codes.Changed {
		t.Fatalf("uplink before the disk filled: %v, want 2.04", code)
	}
	proctest.FillDisk(t, dir)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // devices keep sending
		defer wg.Done()
		for i := uint32(2); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = tryPost(cc, &nbiotv1.Uplink{DeviceId: "FULL-1", UplinkCount: i}, 2*time.Second)
		}
	}()
	exited, err := in.proc.Wait(2 * time.Minute)
	close(stop)
	wg.Wait()
	if !exited {
		t.Fatalf("still running 2 minutes after its disk filled\n%s", in.proc.Output())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exited with %v, want status 1\n%s", err, in.proc.Output())
	}
	if out := in.proc.Output(); !strings.Contains(out, "the store takes no writes") || !strings.Contains(out, "DATA_DIR "+env["DATA_DIR"]) {
		t.Fatalf("the exit does not say why, naming DATA_DIR:\n%s", out)
	}

	if err := os.Remove(filepath.Join(dir, "fill")); err != nil {
		t.Fatal(err)
	}
	again := startProc(t, env)
	if code := tryPost(again.dial(t), &nbiotv1.Uplink{DeviceId: "FULL-1", UplinkCount: 1000}, 5*time.Second); code != codes.Changed {
		t.Fatalf("uplink after a restart with room: %v, want 2.04", code)
	}
}
