// Package natstest runs Debian's nats-server (a real, separate NATS with
// JetStream) for tests of NATS_URL. Without the binary a test is skipped
// when run by hand and fails under CI=true (scripts/test.sh installs it).
package natstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbiot-live/nbiot-live/internal/logtest"
)

// Server is a running nats-server.
type Server struct {
	URL    string
	Addr   string
	cmd    *exec.Cmd
	bin    string
	dir    string
	port   int
	args   []string        // more flags (a cluster's)
	out    *logtest.Buffer // what it printed
	exited chan struct{}   // closed when it exited
}

// attempts bounds the starts on fresh ports: a port found free may be
// taken by another test's process before the server binds it.
const attempts = 5

// Start runs nats-server -js on a free loopback port with its store in a
// temporary directory, until Stop or the end of the test.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := binary(t)
	var err error
	for range attempts {
		s := newServer(t, bin, freePorts(t, 1)[0])
		if err = s.start(); err == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatal(err)
	return nil
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

func newServer(t testing.TB, bin string, port int) *Server {
	s := &Server{bin: bin, dir: t.TempDir(), port: port, Addr: "127.0.0.1:" + strconv.Itoa(port)}
	s.URL = "nats://" + s.Addr
	return s
}

// freePorts returns n distinct loopback ports free at the time of the call.
func freePorts(t testing.TB, n int) []int {
	ports := make([]int, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close() // held until all are chosen: distinct
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// StartCluster runs a JetStream cluster of n nats-servers on loopback,
// each routed to all, until the end of the test, and waits until it has
// elected its JetStream leader (it takes no stream before). URL names
// them all, as NATS_URL would.
func StartCluster(t testing.TB, n int) (servers []*Server, url string) {
	t.Helper()
	bin := binary(t)
	var err error
	for range attempts {
		if servers, err = startCluster(t, bin, n); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	urls := make([]string, n)
	for i, s := range servers {
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

// startCluster starts the n servers on fresh ports, or none.
func startCluster(t testing.TB, bin string, n int) ([]*Server, error) {
	ports := freePorts(t, 2*n) // client ports, then cluster ports
	routes := make([]string, n)
	for i := range n {
		routes[i] = "nats://127.0.0.1:" + strconv.Itoa(ports[n+i])
	}
	var servers []*Server
	for i := range n {
		s := newServer(t, bin, ports[i])
		s.args = []string{"--server_name", "n" + strconv.Itoa(i), "--cluster_name", "nbiot-test",
			"--cluster", routes[i], "--routes", strings.Join(routes, ",")}
		if err := s.start(); err != nil {
			for _, o := range servers {
				o.Stop()
			}
			return nil, err
		}
		servers = append(servers, s)
	}
	return servers, nil
}

// start runs the server and waits until it accepts connections; an error
// if it exits first (its port taken, say) or does not within 15 s.
func (s *Server) start() error {
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.port)}
	if s.dir != "" {
		args = append(args, "-js", "-sd", s.dir)
	}
	args = append(args, s.args...)
	s.out = &logtest.Buffer{}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 100*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("nats-server on %s exited at start: %s", s.Addr, s.out)
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("nats-server did not accept connections on %s: %v\n%s", s.Addr, err, s.out)
		}
		time.Sleep(20 * time.Millisecond) // polling a port the child process opens
	}
}

// Stop kills the server (a crash: kill -9); it is idempotent.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		<-s.exited
		s.cmd = nil
	}
}

// Restart starts the server again on the same port and store.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}

// RestartWith kills a server of StartWith and starts it again on the
// same port with conf as its configuration: the operator changed it.
func (s *Server) RestartWith(t testing.TB, conf string) {
	t.Helper()
	if len(s.args) != 2 || s.args[0] != "-c" {
		t.Fatal("RestartWith: not a server of StartWith")
	}
	if err := os.WriteFile(s.args[1], []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
}

// RestartOn kills the server and starts it again on the same port, with
// JetStream on a store in dir, or without JetStream when dir is "": a node
// that came back without its volume, or without JetStream.
func (s *Server) RestartOn(t testing.TB, dir string) {
	t.Helper()
	s.Stop()
	s.dir = dir
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}
