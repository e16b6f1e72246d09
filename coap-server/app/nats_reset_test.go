package app_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/natstest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/proctest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// resettableNATS is Debian's nats-server on one port, started again by
// the test with or without JetStream and with the store it says.
type resettableNATS struct {
	t    *testing.T
	bin  string
	port int
	cmd  *exec.Cmd
}

func newResettableNATS(t *testing.T) *resettableNATS {
	natstest.Start(t).Stop() // skips (or fails under CI) without nats-server
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		bin = "/usr/sbin/nats-server"
		if _, err := os.Stat(bin); err != nil {
			bin = "/usr/bin/nats-server"
		}
	}
	n := &resettableNATS{t: t, bin: bin, port: proctest.FreePort(t)}
	t.Cleanup(n.kill)
	return n
}

func (n *resettableNATS) url() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

// start kills the running one (kill -9) and runs it again: with
// JetStream on a store in dir, or without JetStream when dir is empty.
func (n *resettableNATS) start(dir string) {
	n.t.Helper()
	n.kill()
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(n.port)}
	if dir != "" {
		args = append(args, "-js", "-sd", dir)
	}
	n.cmd = exec.Command(n.bin, args...)
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	testwait.For(n.t, "nats-server accepting connections", func() bool {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(n.port), 100*time.Millisecond)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	}, testwait.Within(15*time.Second))
}

func (n *resettableNATS) kill() {
	if n.cmd != nil {
		_ = n.cmd.Process.Kill()
		_ = n.cmd.Wait()
		n.cmd = nil
	}
}

// NATS_URL comes back without its streams. First without JetStream:
// /readyz fails and keeps failing (it said 200: the connections were up),
// uplinks get 5.03. Then with JetStream on an empty store (a node
// restarted without its volume): coap-server creates the streams and the
// storage consumer again, /readyz passes, and uplinks get 2.04 and reach
// the database again. Before, every uplink got 5.03 for good.
func TestNATSBackWithoutItsStreams(t *testing.T) {
	db := pgtest.NewDB(t)
	ns := newResettableNATS(t)
	ns.start(t.TempDir())
	a := startApp(t, func(c *app.Config) { c.Stream.URL, c.DatabaseURL = ns.url(), db })
	cc := dialCoAP(t, a)
	ready := func() int {
		resp, err := http.Get("http://" + a.HTTPAddr().String() + "/readyz")
		if err != nil {
			return 0
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	stored := func(want ...uint32) {
		t.Helper()
		testwait.ForState(t, fmt.Sprint("uplinks ", want, " stored"), func() (bool, string) {
			got := storedCounts(t, db, "NRST")
			for _, n := range want {
				if !got[n] {
					return false, fmt.Sprint(got)
				}
			}
			return true, ""
		}, testwait.Within(20*time.Second))
	}
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "NRST", UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("before: %v", code)
	}
	stored(1)
	if c := ready(); c != http.StatusOK {
		t.Fatalf("/readyz before: %d", c)
	}

	ns.start("") // the same address, no JetStream
	testwait.For(t, "reconnected", a.Engine().Connected, testwait.Within(15*time.Second))
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c := ready(); c != http.StatusServiceUnavailable {
			t.Fatalf("/readyz %d, connected to a NATS without JetStream", c)
		}
	}
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "NRST", UplinkCount: 2}); code != codes.ServiceUnavailable {
		t.Fatalf("without JetStream: %v, want 5.03", code)
	}

	ns.start(t.TempDir()) // JetStream, an empty store
	testwait.ForState(t, "/readyz once the streams are created again", func() (bool, string) {
		c := ready()
		return c == http.StatusOK, strconv.Itoa(c)
	}, testwait.Within(30*time.Second))
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "NRST", UplinkCount: 3}); code != codes.Changed {
		t.Fatalf("after: %v, want 2.04", code)
	}
	stored(1, 3)
}
