package pgtest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/logtest"
)

// Bouncer runs Debian's pgbouncer in transaction mode in front of the
// database dbURL names and returns the URL of the same database through
// it: what Supabase's transaction pooler (Supavisor, port 6543) is to a
// project. In that mode a client's statements may run on a different
// server connection from one transaction to the next, so a named
// prepared statement or a LISTEN does not stay with the client, and a
// server connection keeps the statements of clients gone before. It is
// stopped when the test ends (before NewDB's database is dropped, when
// dbURL came from it earlier). Without pgbouncer the test is skipped, or
// fails under CI=true (scripts/test.sh installs it).
func Bouncer(t testing.TB, dbURL string) string {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		if _, e := os.Stat("/usr/sbin/pgbouncer"); e == nil {
			bin, err = "/usr/sbin/pgbouncer", nil
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("pgbouncer not installed (scripts/test.sh installs Debian's package)")
		}
		t.Skip("pgbouncer not installed (apt-get install pgbouncer)")
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	// Not t.TempDir: its parent is the test's own, closed to the postgres
	// user pgbouncer runs as under root.
	dir, err := os.MkdirTemp("", "pgtest-bouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	db := filepath.Base(u.Path)
	ini := fmt.Sprintf("[databases]\n%s = host=%s port=%s dbname=%s user=%s\n\n[pgbouncer]\n"+
		"listen_addr = 127.0.0.1\nlisten_port = %d\nunix_socket_dir =\nauth_type = any\npool_mode = transaction\n"+
		"default_pool_size = 4\nignore_startup_parameters = extra_float_digits,search_path\n",
		db, u.Hostname(), u.Port(), db, u.User.Username(), port)
	file := filepath.Join(dir, "pgbouncer.ini")
	if err := os.WriteFile(file, []byte(ini), 0o644); err != nil {
		t.Fatal(err)
	}
	out := &logtest.Buffer{}
	cmd := exec.Command(bin, file)
	cmd.Stdout, cmd.Stderr = out, out
	if os.Getuid() == 0 { // pgbouncer refuses to run as root
		pg, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgbouncer does not run as root, and there is no postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("pgbouncer exited at start: %s", out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbouncer did not listen on %s: %v\n%s", addr, err, out)
		}
		time.Sleep(20 * time.Millisecond) // polling a port the child process opens
	}
	through := *u
	through.Host = addr
	return through.String()
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
