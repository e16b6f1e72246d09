package app_test

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/nbiot-live/nbiot-live/internal/proctest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// TestSecondProcessOnOneDataDirExits: a second coap-server started on a
// DATA_DIR in use (by hand or a supervisor, beside an old process still
// draining). nats-server takes no lock on its store, so the second one
// started too, and the two servers wrote the same message blocks. Now it
// exits 1 with
// one line naming DATA_DIR and the first one's pid, and the first one
// goes on answering.
func TestSecondProcessOnOneDataDirExits(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	first := startProc(t, map[string]string{"DATA_DIR": dir})
	cc := first.dial(t)
	if code := tryPost(cc, &nbiotv1.Uplink{DeviceId: "LOCK-1", UplinkCount: 1}, 5*time.Second); code != codes.Changed {
		t.Fatalf("first instance: %v, want 2.04", code)
	}

	bin := proctest.Build(t, "github.com/nbiot-live/nbiot-live/coap-server")
	second := proctest.Start(t, bin, map[string]string{
		"DATA_DIR":  dir,
		"COAP_ADDR": "127.0.0.1:" + strconv.Itoa(proctest.FreePort(t)),
		"HTTP_ADDR": "127.0.0.1:" + strconv.Itoa(proctest.FreePort(t)),
		"WS_TOKEN":  testToken,
	})
	exited, err := second.Wait(30 * time.Second)
	if !exited {
		t.Fatalf("a second coap-server on the same DATA_DIR still runs after 30 s\n%s", second.Output())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exited with %v, want status 1\n%s", err, second.Output())
	}
	want := "DATA_DIR " + dir + " is in use by another coap-server (pid " + strconv.Itoa(first.proc.Pid()) + ")"
	if out := second.Output(); !strings.Contains(out, want) {
		t.Errorf("the refusal does not say %q:\n%s", want, out)
	}

	if code := tryPost(cc, &nbiotv1.Uplink{DeviceId: "LOCK-1", UplinkCount: 2}, 5*time.Second); code != codes.Changed {
		t.Fatalf("first instance after the refusal: %v, want 2.04", code)
	}
}
