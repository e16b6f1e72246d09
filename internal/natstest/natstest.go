// Package natstest runs Debian's nats-server (a real, separate NATS with
// JetStream) for tests of NATS_URL. Without the binary a test is skipped
// when run by hand and fails under CI=true (scripts/test.sh installs it).
package natstest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is a running nats-server.
type Server struct {
	URL  string
	Addr string
	cmd  *exec.Cmd
	bin  string
	dir  string
	port int
	args []string // more flags (a cluster's)
}

// Start runs nats-server -js on a free loopback port with its store in a
// temporary directory, until Stop or the end of the test.
func Start(t testing.TB) *Server {
	t.Helper()
	s := newServer(t, binary(t))
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

// binary is the nats-server executable; without it the test is skipped,
// or fails under CI=true.
func binary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nats-server", "/usr/bin/nats-server"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nats-server not installed (scripts/test.sh installs Debian's package)")
		}
		t.Skip("nats-server not installed (apt-get install nats-server)")
	}
	return bin
}

func newServer(t testing.TB, bin string) *Server {
	port := freePort(t)
	s := &Server{bin: bin, dir: t.TempDir(), port: port, Addr: "127.0.0.1:" + strconv.Itoa(port)}
	s.URL = "nats://" + s.Addr
	return s
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// StartCluster runs a JetStream cluster of n nats-servers on loopback,
// each routed to all, until the end of the test, and waits until it has
// elected its JetStream leader (it takes no stream before). URL names
// them all, as NATS_URL would.
func StartCluster(t testing.TB, n int) (servers []*Server, url string) {
	t.Helper()
	bin := binary(t)
	routes := make([]string, n)
	cluster := make([]int, n)
	for i := range n {
		servers = append(servers, newServer(t, bin))
		cluster[i] = freePort(t)
		routes[i] = "nats://127.0.0.1:" + strconv.Itoa(cluster[i])
	}
	urls := make([]string, n)
	for i, s := range servers {
		s.args = []string{"--server_name", "n" + strconv.Itoa(i), "--cluster_name", "nbiot-test",
			"--cluster", routes[i], "--routes", strings.Join(routes, ",")}
		s.start(t)
		t.Cleanup(s.Stop)
		urls[i] = s.URL
	}
	url = strings.Join(urls, ",")
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return servers, url
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster of %d elected no JetStream leader within 30 s: %v", n, err)
		}
		time.Sleep(100 * time.Millisecond) // polling the cluster's election, which has no event to wait for
	}
}

func (s *Server) start(t testing.TB) {
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.port)}
	if s.dir != "" {
		args = append(args, "-js", "-sd", s.dir)
	}
	args = append(args, s.args...)
	s.cmd = exec.Command(s.bin, args...)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 100*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server did not accept connections on %s: %v", s.Addr, err)
		}
		time.Sleep(20 * time.Millisecond) // polling a port the child process opens
	}
}

// Stop kills the server (a crash: kill -9); it is idempotent.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Restart starts the server again on the same port and store.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}

// RestartOn kills the server and starts it again on the same port, with
// JetStream on a store in dir, or without JetStream when dir is "": a node
// that came back without its volume, or without JetStream.
func (s *Server) RestartOn(t testing.TB, dir string) {
	t.Helper()
	s.Stop()
	s.dir = dir
	s.start(t)
}
