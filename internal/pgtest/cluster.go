package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a private Postgres server that a test may stop and start (an
// outage test), with the local Supabase stand-ins (scripts/local/
// bootstrap.sql) and every migration in supabase/migrations applied in
// order to its database "nbiot", as `supabase db push` applies them. It
// never touches the shared test cluster that other packages use.
type Cluster struct {
	// URL is the superuser URL of the migrated database.
	URL  string
	bin  string
	dir  string
	port int
	run  []string // runuser prefix when root: Postgres refuses to run as root
}

// StartCluster starts a cluster for the test and removes it at the end.
// Like TemplateURL it skips the test locally, and fails it in CI, when the
// database environment is missing.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	TemplateURL(t) // the same gate as every database test
	bin := os.Getenv("PGBIN")
	if bin == "" {
		bin = "/usr/lib/postgresql/15/bin"
	}
	if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
		t.Fatalf("pgtest: no initdb in %s (PGBIN): %v", bin, err)
	}
	dir, err := os.MkdirTemp("", "nbiot-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{bin: bin, dir: dir}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgtest: running as root needs the postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		c.run = []string{"runuser", "-u", "postgres", "--"}
	}
	t.Cleanup(func() {
		_ = c.pgctl("stop", "-m", "immediate")
		_ = os.RemoveAll(dir)
	})
	if out, err := c.cmd(filepath.Join(bin, "initdb"), "-D", c.data(), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	c.Start(t)
	admin := fmt.Sprintf("postgresql://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
	c.URL = fmt.Sprintf("postgresql://postgres@127.0.0.1:%d/nbiot?sslmode=disable", c.port)
	execFiles(t, admin, nil, "create database nbiot")
	root := repoRoot(t)
	files := []string{filepath.Join(root, "scripts", "local", "bootstrap.sql")}
	migrations, _ := filepath.Glob(filepath.Join(root, "supabase", "migrations", "*.sql"))
	sort.Strings(migrations)
	execFiles(t, c.URL, append(files, migrations...), "")
	return c
}

func (c *Cluster) data() string { return filepath.Join(c.dir, "data") }

func (c *Cluster) cmd(name string, args ...string) *exec.Cmd {
	all := append(append(append([]string{}, c.run...), name), args...)
	return exec.Command(all[0], all[1:]...)
}

func (c *Cluster) pgctl(args ...string) error {
	base := []string{"-D", c.data(), "-w", "-t", "60"}
	out, err := c.cmd(filepath.Join(c.bin, "pg_ctl"), append(base, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %v: %w\n%s", args, err, out)
	}
	return nil
}

// Start (re)starts the server on its port; it returns once it accepts
// connections (pg_ctl -w).
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -k %s -c fsync=off -c synchronous_commit=off -c full_page_writes=off", c.port, c.dir)
	if err := c.pgctl("-l", filepath.Join(c.dir, "log"), "start", "-o", opts); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// Stop stops the server (fast mode: connections are cut, as in a crash
// or failover as far as clients can tell).
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	if err := c.pgctl("stop", "-m", "fast"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// execFiles runs each file's SQL (or sql when files is nil) as one
// simple-protocol batch.
func execFiles(t testing.TB, url string, files []string, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if files == nil {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("pgtest: %s: %v", sql, err)
		}
		return
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, string(b)); err != nil {
			t.Fatalf("pgtest: apply %s: %v", filepath.Base(f), err)
		}
	}
}

// repoRoot is the directory holding go.mod, above the test's directory.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("pgtest: go.mod not found above the working directory")
		}
		dir = parent
	}
}
