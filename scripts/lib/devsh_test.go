package lib

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDevShStopsCleanly runs the README's first command, scripts/dev.sh,
// for real (Postgres, the migrations, coap-server, the relay, a simulated
// device), waits until it says it is running and both servers answer, and
// then stops it with SIGTERM, repeated. Nothing may be left behind: no
// Postgres, no cluster directory, no process of the run. (The old cleanup
// reset its signal traps first, so a second signal killed it halfway and
// left Postgres running: under timeout(1), whose SIGTERM to the script is
// followed by one to its process group, in some runs.)
func TestDevShStopsCleanly(t *testing.T) {
	needTools(t, "go", "curl") // test.sh installs curl; dev.sh the rest

	coapPort := freePort(t, "udp")
	httpPort, relayPort := freePort(t, "tcp"), freePort(t, "tcp")
	cmd := exec.Command("bash", "../dev.sh")
	cmd.Env = append(os.Environ(), "DEVICES=1", "RATE=5",
		"COAP_PORT="+strconv.Itoa(coapPort), "HTTP_PORT="+strconv.Itoa(httpPort), "RELAY_PORT="+strconv.Itoa(relayPort))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })

	// Read what it prints until it says it runs (or exits).
	var log bytes.Buffer
	lines := bufio.NewScanner(out)
	running := false
	for !running && lines.Scan() {
		log.WriteString(lines.Text() + "\n")
		running = strings.Contains(lines.Text(), "nbiot-live is running.")
	}
	if !running {
		_ = cmd.Wait()
		t.Fatalf("dev.sh ended before it said it runs:\n%s", log.String())
	}
	m := regexp.MustCompile(`postgres on 127\.0\.0\.1:\d+ \((/tmp/nbiot-pg\.[^)]+)\)`).FindStringSubmatch(log.String())
	if m == nil {
		t.Fatalf("dev.sh did not say where its Postgres is:\n%s", log.String())
	}
	pgDir := m[1]
	for _, url := range []string{
		"http://127.0.0.1:" + strconv.Itoa(httpPort) + "/readyz",
		"http://127.0.0.1:" + strconv.Itoa(relayPort) + "/healthz",
	} {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatalf("%s: %v\n%s", url, err, log.String())
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", url, resp.Status)
		}
	}
	read := make(chan struct{})
	go func() { // keep reading, so that the script never blocks on its output
		defer close(read)
		for lines.Scan() {
			log.WriteString(lines.Text() + "\n")
		}
	}()

	// SIGTERM to the script every millisecond until its output closes (it
	// and everything it started have exited): later ones land while the
	// cleanup runs, as timeout(1)'s second one (to the process group) or an
	// impatient second Ctrl-C can.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Minute)
	_ = syscall.Kill(pgid, syscall.SIGTERM)
signal:
	for {
		select {
		case <-read:
			break signal
		case <-tick.C:
			_ = syscall.Kill(pgid, syscall.SIGTERM)
		case <-deadline:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-read // the reader is done with log
			t.Fatalf("dev.sh's output still open 2 minutes after SIGTERM:\n%s", log.String())
		}
	}
	if err := cmd.Wait(); err == nil {
		t.Error("dev.sh exited 0 on SIGTERM, want 130")
	}

	if _, err := os.Stat(pgDir); !os.IsNotExist(err) {
		t.Errorf("the Postgres cluster %s is still there (stat: %v)", pgDir, err)
		defer os.RemoveAll(pgDir)
	}
	for _, p := range leftovers(t, pgid, pgDir) {
		t.Errorf("left running: %s", p.line)
		_ = syscall.Kill(p.pid, syscall.SIGKILL) // not to leave it to the next test
	}
	if t.Failed() {
		t.Logf("dev.sh printed:\n%s", log.String())
	}
}

// freePort returns a port the kernel just gave out and took back.
func freePort(t *testing.T, proto string) int {
	t.Helper()
	if proto == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).Port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

type leftover struct {
	pid  int
	line string
}

// leftovers lists the live processes of process group pgid, and those
// whose command line names dir (Postgres leaves the group: pg_ctl detaches
// it).
func leftovers(t *testing.T, pgid int, dir string) []leftover {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var left []leftover
	for _, stat := range stats {
		b, err := os.ReadFile(stat)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
		s := string(b)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(stat), "cmdline"))
		line := strings.ReplaceAll(string(bytes.TrimRight(cmdline, "\x00")), "\x00", " ")
		if f[2] == strconv.Itoa(pgid) || strings.Contains(line, dir) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(stat)))
			left = append(left, leftover{pid, s[:end+1] + " " + line})
		}
	}
	return left
}
