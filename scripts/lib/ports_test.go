// Package lib holds the tests of scripts/lib/common.sh, the shell library of
// scripts/dev.sh and scripts/test.sh, and of dev.sh itself. The tests run
// the real functions and the real script with bash, against real sockets
// and a real Postgres.
package lib

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// needTools skips the test when run by hand without bash, python3 (the
// probe is a python3 one-liner) or the other tools named, and fails it in CI.
func needTools(t *testing.T, others ...string) {
	t.Helper()
	for _, tool := range append([]string{"bash", "python3"}, others...) {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing", tool)
			}
			t.Skipf("%s is missing", tool)
		}
	}
}

// portFree runs common.sh's port_free and reports whether it said free.
func portFree(t *testing.T, proto string, port int) bool {
	t.Helper()
	cmd := exec.Command("bash", "-c", `source ./common.sh && port_free "$@"`, "bash", proto, "127.0.0.1", strconv.Itoa(port))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true
	case errors.As(err, &exit):
		return false
	default:
		t.Fatalf("port_free: %v\n%s", err, out)
		return false
	}
}

// listenWithoutReuse binds addr the way the old probe did: no SO_REUSEADDR.
func listenWithoutReuse(addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 0)
		}); err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(context.Background(), "tcp", addr)
}

// TestPortFreeAfterTIMEWAIT is issue 14's first stumble: dev.sh started
// again within a minute of Ctrl-C refused a port that only a closed
// connection in TIME-WAIT still held. The servers (Go's net.Listen, which
// sets SO_REUSEADDR) bind it fine, so the probe must say free.
func TestPortFreeAfterTIMEWAIT(t *testing.T) {
	needTools(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	addr := ln.Addr().String()
	if portFree(t, "tcp", port) {
		t.Fatal("port_free says free while a listener holds the port")
	}
	// A browser's connection, closed by the server first: the server's side
	// of it (on the listening port) goes to TIME-WAIT, as after Ctrl-C.
	client, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	server.Close()
	if _, err := io.Copy(io.Discard, client); err != nil {
		t.Fatal(err)
	}
	client.Close()

	// The precondition, or the test proves nothing: a bind without
	// SO_REUSEADDR (the old probe) is refused while the closed connection
	// lingers. Poll: the kernel finishes the close asynchronously.
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := listenWithoutReuse(addr)
		if errors.Is(err, syscall.EADDRINUSE) {
			break
		}
		if err == nil {
			l.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("the closed connection never held the port (last bind: %v)", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !portFree(t, "tcp", port) {
		t.Error("port_free says taken for a port only a TIME-WAIT connection holds")
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("Go's net.Listen on the same port: %v", err)
	}
	l.Close()
}

// TestPortFreeUDP: the CoAP port is UDP, so the probe binds UDP, and says
// taken while a UDP socket (a coap-server already running) holds it.
func TestPortFreeUDP(t *testing.T) {
	needTools(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	if portFree(t, "udp", port) {
		t.Error("port_free udp says free while a UDP socket holds the port")
	}
	pc.Close()
	if !portFree(t, "udp", port) {
		t.Error("port_free udp says taken for a closed UDP port")
	}
}
