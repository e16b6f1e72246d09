// Package proctest builds and runs the project's binaries as real
// processes, so tests can kill them (kill -9, a crash) and start them
// again: what an operator's deploy or an OOM kill does.
package proctest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/logtest"
)

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// Build compiles the main package pkg (an import path) once per test
// binary and returns the executable's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "nbiot-bin-")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

// Proc is a running process with its output kept for failure messages.
type Proc struct {
	cmd *exec.Cmd
	out *logtest.Buffer
}

// Start runs bin with env (on top of PATH and HOME) until Kill, Stop or
// the end of the test.
func Start(t testing.TB, bin string, env map[string]string) *Proc {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &Proc{cmd: cmd, out: &logtest.Buffer{}}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

// Wait waits up to d for the process to exit on its own, and returns
// whether it did and how (err nil for status 0); past d it is killed.
func (p *Proc) Wait(d time.Duration) (exited bool, err error) {
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return true, err
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-done
		return false, nil
	}
}

// SmallDisk mounts a tmpfs of size (mount(8) syntax: "400m") on a new
// directory, unmounted when the test ends: a volume of that size, to fill
// or to be too small. It needs root, as CI has it; without, the test is
// skipped by hand and fails under CI=true.
func SmallDisk(t testing.TB, size string) string {
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

// FillDisk writes a file in dir until its filesystem is full.
func FillDisk(t testing.TB, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for buf := make([]byte, 1<<20); ; {
		if _, err := f.Write(buf); err != nil {
			return // ENOSPC
		}
	}
}

// Kill ends the process with SIGKILL (nothing is flushed or drained).
func (p *Proc) Kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

// Stop sends SIGTERM and waits for the process to exit.
func (p *Proc) Stop(t testing.TB) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("process exited: %v\n%s", err, p.Output())
		}
	case <-time.After(40 * time.Second):
		p.Kill()
		t.Errorf("process did not stop within 40 s\n%s", p.Output())
	}
}

// Output is what the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Pid is the process's ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// FreePort returns a loopback port free for both UDP and TCP at the time
// of the call.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		_ = ln.Close()
		if err == nil {
			_ = u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}
