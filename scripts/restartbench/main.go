// Command restartbench measures what an operator meets after a crash
// during a long database outage: UPLINKS full, then coap-server started
// again with the database back. It fills UPLINKS in DATA_DIR through the
// stream package (the path the datagram handler takes) in a child process,
// kills that child with SIGKILL once the stream refuses more (5.03), then
// builds and starts coap-server on the same DATA_DIR as fly.toml runs it
// (GOMEMLIMIT=400MiB, GOGC=200) with DATABASE_URL, and prints how long it
// took to be ready, its peak resident memory, how long the backlog took
// to reach the database, and whether the database holds each uplink once.
// It is a bench, not a test: the figures depend on the machine.
//
//	go run ./scripts/restartbench -data DIR -db postgres://…/db?sslmode=disable [-bytes 536870912]
//
// from the repository root (it builds ./coap-server).
//
// DIR should be a filesystem of the volume's size (fly.toml: 1 GB), e.g.
// mount -t tmpfs -o size=950m tmpfs DIR; the database a freshly migrated
// one (createdb -T nbiot restartbench on the test cluster), since the
// bench counts its activity rows.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/scripts/simulate/sim"
)

func main() {
	data := flag.String("data", "", "DATA_DIR to fill and restart on (required)")
	db := flag.String("db", "", "DATABASE_URL of a migrated database with no activity rows (required)")
	bytes := flag.Int64("bytes", stream.DefaultUplinksBytes, "UPLINKS_MAX_BYTES")
	fill := flag.Bool("fill", false, "internal: fill UPLINKS, print the count, wait to be killed")
	flag.Parse()
	if *data == "" || (*db == "" && !*fill) {
		flag.Usage()
		os.Exit(2)
	}
	var err error
	if *fill {
		err = fillUplinks(*data, *bytes)
	} else {
		err = run(*data, *db, *bytes)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "restartbench:", err)
		os.Exit(1)
	}
}

// fillUplinks publishes simulated devices' uplinks until UPLINKS is full,
// prints "full N", and waits to be killed: nothing is closed, as in a crash.
func fillUplinks(dir string, bytes int64) error {
	e, err := stream.Open(context.Background(), stream.Config{DataDir: dir, Storage: true, UplinksBytes: bytes})
	if err != nil {
		return err
	}
	var n atomic.Int64
	var full atomic.Bool
	var wg sync.WaitGroup
	start := time.Now()
	for w := range 32 { // group commit needs callers in parallel
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := 0; !full.Load(); d++ {
				dev := sim.NewDevice(fmt.Sprintf("RB%02d%04d", w, d%1000), uint64(w<<20|d), 0.01)
				u := dev.Next()
				payload, _ := proto.Marshal(u)
				a := uplink.Accepted{ID: uuid.New(), DeviceID: dev.ID, ReceivedAt: time.Now(), Uplink: u}
				_, _ = rand.Read(a.Key[:])
				err := e.PublishUplink(context.Background(), a, payload)
				switch {
				case errors.Is(err, stream.ErrFull):
					full.Store(true)
				case err != nil:
					fmt.Fprintln(os.Stderr, "publish:", err)
					full.Store(true)
				default:
					n.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("full %d %.1f\n", n.Load(), time.Since(start).Seconds())
	select {} // killed by the parent
}

func run(dir, db string, bytes int64) error {
	// 1. Fill, then kill -9.
	self, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.Command(self, "-fill", "-data", dir, "-bytes", strconv.FormatInt(bytes, 10))
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	if err := child.Start(); err != nil {
		return err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	_ = child.Process.Kill()
	_ = child.Wait()
	var uplinks int64
	var fillSecs float64
	if _, serr := fmt.Sscanf(line, "full %d %f", &uplinks, &fillSecs); serr != nil {
		return fmt.Errorf("fill: %q %v", line, err)
	}
	fmt.Printf("filled UPLINKS (%d MiB) with %d uplinks in %.1f s, then kill -9\n", bytes>>20, uplinks, fillSecs)

	// 2. coap-server on the same store, as fly.toml runs it.
	tmp, err := os.MkdirTemp("", "restartbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "coap-server")
	if b, err := exec.Command("go", "build", "-o", bin, "./coap-server").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./coap-server: %v\n%s", err, b)
	}
	srv := exec.Command(bin)
	srv.Env = append(os.Environ(), "WS_TOKEN=restartbench-token-0123456789abcdef", "DATABASE_URL="+db, "DATA_DIR="+dir,
		"GOMEMLIMIT=400MiB", "GOGC=200", "COAP_ADDR=127.0.0.1:0", "HTTP_ADDR=127.0.0.1:18480", "METRICS_ADDR=127.0.0.1:18490",
		"UPLINKS_MAX_BYTES="+strconv.FormatInt(bytes, 10), "LOG_LEVEL=warn")
	srv.Stderr, srv.Stdout = os.Stderr, os.Stderr
	start := time.Now()
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var ready, drained time.Duration
	var peak int64
	for ready == 0 || drained == 0 {
		if time.Since(start) > 30*time.Minute {
			return errors.New("not drained within 30 minutes")
		}
		if kb := peakKB(srv.Process.Pid); kb > 0 {
			peak = kb
		} else {
			return errors.New("coap-server exited")
		}
		if ready == 0 && get("http://127.0.0.1:18480/readyz") == "ready" {
			ready = time.Since(start)
		}
		if ready > 0 && metric(get("http://127.0.0.1:18490/metrics"), "nbiot_storage_pending") == "0" {
			drained = time.Since(start)
		}
		time.Sleep(100 * time.Millisecond) // sampling an outside process
	}
	fmt.Printf("coap-server ready after %.2f s; backlog stored after %.1f s (%.0f uplinks/s); peak RSS %d MiB (GOMEMLIMIT 400 MiB, the machine 512 MB)\n",
		ready.Seconds(), drained.Seconds(), float64(uplinks)/(drained-ready).Seconds(), peak>>10)

	// 3. Each uplink stored once.
	conn, err := pgx.Connect(context.Background(), db)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var rows int64
	if err := conn.QueryRow(context.Background(), "select count(*) from activity").Scan(&rows); err != nil {
		return err
	}
	fmt.Printf("activity rows: %d for %d uplinks accepted\n", rows, uplinks)
	if rows != uplinks {
		return fmt.Errorf("%d rows for %d uplinks", rows, uplinks)
	}
	return nil
}

// peakKB is the process's peak resident set (VmHWM), 0 once it is gone.
func peakKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

func get(url string) string {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return strings.TrimSpace(b.String())
}

// metric is the value of an unlabelled metric in a Prometheus text page.
func metric(page, name string) string {
	for _, l := range strings.Split(page, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
