// Command coapbench measures plain-CoAP servers side by side with one Go
// load generator: libcoap's example server (coap-server-notls -d 10,
// Debian libcoap3-bin), go-coap v3's bare UDP server, and coap-server
// (live logs only: no storage, no subscribers; every uplink's entry is
// published to the embedded JetStream LIVELOG and acknowledged before the
// 2.04), and "lean": coap-server's datagram path and uplink logic with the
// stream replaced by a no-op, the CoAP layer's own cost. Each server runs as its own
// process, so its CPU is read from /proc/<pid>/stat without the load's.
// For each server and peer pattern (K long-lived peers, or peers rotating
// to a new source port every -rotate requests) it prints requests/s, the
// round trip's p50/p99, server CPU µs per request and the ratio to
// libcoap's CPU; "coap-server+db" is coap-server storing every uplink
// (the durable path: UPLINKS, the storage consumer, Postgres at
// COAPBENCH_DATABASE_URL, which must have the migrations; the database's
// own CPU is not counted, coap-server's until every uplink answered is
// stored is); "lost" counts requests unanswered within 2 s or answered
// with anything but 2.04. It is a bench, not a test: figures depend on the machine
// and its load (the load average is printed with them).
//
// Then, per server, the chatty-source case: one source (one address and
// port) keeps -chatty-k CON uplinks in flight for -chatty while another
// device sends one every 100 ms; it prints the source's answers/s in the
// first and last 5 s and the other device's p50/p99. -soak 3m instead runs
// one such source alone per server and prints its answers/s per 30 s.
// -rate 1000 instead drives each server at that many uplinks/s in total
// from -peers long-lived peers (open loop, as a fleet reports) and prints
// the round trips' p50/p99/max, the CPU per uplink and the p99's ratio to
// libcoap's.
//
//	go run ./scripts/coapbench [-k 16] [-duration 5s] [-rotate 100] [-servers libcoap,go-coap,lean,coap-server] [-chatty 45s] [-chatty-k 16]
//	COAPBENCH_DATABASE_URL=postgres://… go run ./scripts/coapbench -servers libcoap,coap-server,coap-server+db
//	go run ./scripts/coapbench -soak 3m
//	COAPBENCH_DATABASE_URL=postgres://… go run ./scripts/coapbench -rate 1000 -duration 20s -servers libcoap,lean,coap-server,coap-server+db
//
// COAPBENCH_CPUPROFILE=DIR writes each Go server's CPU profile to
// DIR/<server>.pprof (go tool pprof -top DIR/coap-server.pprof); with
// COAPBENCH_CPUPROFILE_EVERY=60s too, one profile per minute instead
// (DIR/<server>-1.pprof, -2, …), to compare the start of a soak with its
// end (go tool pprof -top -diff_base DIR/coap-server-1.pprof DIR/coap-server-3.pprof).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapNet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

func main() {
	serve := flag.String("serve", "", "internal: run one server (go-coap, coap-server or lean) on -addr")
	addr := flag.String("addr", "127.0.0.1:0", "internal: address for -serve")
	k := flag.Int("k", 16, "requests in flight (one per peer)")
	duration := flag.Duration("duration", 5*time.Second, "measured time per server and pattern")
	warmup := flag.Duration("warmup", time.Second, "unmeasured load before each measurement")
	rotate := flag.Int("rotate", 100, "rotating peers: requests per source port")
	servers := flag.String("servers", "libcoap,go-coap,lean,coap-server", "servers to measure, in order")
	chattyFor := flag.Duration("chatty", 45*time.Second, "chatty-source run per server (0: none)")
	chattyK := flag.Int("chatty-k", 16, "the chatty source's requests in flight")
	soak := flag.Duration("soak", 0, "instead of the rest: one source flat out this long per server, throughput per 30 s")
	rate := flag.Float64("rate", 0, "instead of the rest: this many uplinks/s in total from -peers long-lived peers for -duration per server, round trips and CPU")
	peers := flag.Int("peers", 100, "peers for -rate")
	probeAddr := flag.String("probe", "", "internal: run the other device against this address for -duration")
	flag.Parse()
	if *probeAddr != "" {
		r, err := probe(*probeAddr, *duration)
		if err != nil {
			fmt.Fprintln(os.Stderr, "coapbench:", err)
			os.Exit(1)
		}
		fmt.Println(r.answered, r.lost, int64(r.p50), int64(r.p99), int64(r.elapsed))
		return
	}
	if *serve != "" {
		if err := runServer(*serve, *addr); err != nil {
			fmt.Fprintln(os.Stderr, "coapbench:", err)
			os.Exit(1)
		}
		return
	}
	var err error
	switch {
	case *soak > 0:
		err = soakAll(strings.Split(*servers, ","), *chattyK, *soak)
	case *rate > 0:
		err = pacedAll(strings.Split(*servers, ","), *peers, *rate, *duration, *warmup)
	default:
		err = bench(strings.Split(*servers, ","), *k, *duration, *warmup, *rotate, *chattyFor, *chattyK)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "coapbench:", err)
		os.Exit(1)
	}
}

type result struct {
	server, peers string
	load          loadResult
	cpuPerReq     time.Duration
}

type chattyRun struct {
	server string
	chattyResult
}

func bench(servers []string, k int, duration, warmup time.Duration, rotate int, chattyFor time.Duration, chattyK int) error {
	probe := &peer{device: "BENCH-0000"}
	fmt.Printf("coapbench: K=%d, %v per run, rotating peers every %d requests, a %d-byte Uplink, load average before: %s\n",
		k, duration, rotate, len(probe.uplink(1000)), loadavg())
	var results []result
	var chattyRuns []chattyRun
	for _, name := range servers {
		srv, stored, err := startCounted(name)
		if err != nil {
			return err
		}
		for _, pattern := range []struct {
			name   string
			rotate int
		}{{fmt.Sprintf("%d long-lived", k), 0}, {fmt.Sprintf("rotating/%d", rotate), rotate}} {
			wr := drive(srv.addr, k, warmup, pattern.rotate)
			if stored != nil {
				if _, err := stored.settle(wr.answered); err != nil {
					srv.stop()
					return err
				}
			}
			cpu0, err := cpuTime(srv.pid)
			if err != nil {
				srv.stop()
				return err
			}
			lr := drive(srv.addr, k, duration, pattern.rotate)
			if stored != nil {
				// The CPU of storing what was answered, after the load too.
				took, err := stored.settle(lr.answered)
				if err != nil {
					srv.stop()
					return err
				}
				fmt.Printf("  %-12s %-14s every answered uplink stored %v after the load\n", name, pattern.name, took.Round(time.Millisecond))
			}
			cpu1, _ := cpuTime(srv.pid)
			r := result{server: name, peers: pattern.name, load: lr}
			if lr.answered > 0 {
				r.cpuPerReq = (cpu1 - cpu0) / time.Duration(lr.answered)
			}
			results = append(results, r)
			fmt.Printf("  %-12s %-14s %8.0f req/s  p50 %7v  p99 %7v  CPU %6.1f µs/req  lost %d  (load %s)\n",
				name, pattern.name, lr.rate(), lr.p50, lr.p99, micros(r.cpuPerReq), lr.lost, loadavg())
		}
		if chattyFor > 0 {
			cr, err := chatty(srv.addr, chattyFor, 5*time.Second, chattyK, true)
			if err != nil {
				srv.stop()
				return fmt.Errorf("%s: chatty: %w", name, err)
			}
			chattyRuns = append(chattyRuns, chattyRun{name, cr})
			fmt.Printf("  %-12s chatty source (%d in flight, %v): %.0f answers/s first 5 s, %.0f last (%.2f×), lost %d; other device every 100 ms: p50 %v p99 %v lost %d  (load %s)\n",
				name, chattyK, chattyFor, cr.first(), cr.last(), cr.last()/cr.first(), cr.lost,
				cr.other.p50, cr.other.p99, cr.other.lost, loadavg())
		}
		srv.stop()
		if stored != nil {
			stored.close()
		}
	}
	fmt.Println()
	fmt.Println("| server | peers | req/s | p50 | p99 | server CPU per request | × libcoap |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, r := range results {
		ratio := "–"
		for _, base := range results {
			if base.server == "libcoap" && base.peers == r.peers && base.cpuPerReq > 0 {
				ratio = fmt.Sprintf("%.1f×", float64(r.cpuPerReq)/float64(base.cpuPerReq))
			}
		}
		fmt.Printf("| %s | %s | %.0f | %v | %v | %.1f µs | %s |\n", r.server, r.peers, r.load.rate(),
			r.load.p50.Round(time.Microsecond), r.load.p99.Round(time.Microsecond), micros(r.cpuPerReq), ratio)
	}
	if len(chattyRuns) > 0 {
		fmt.Printf("\nOne source flat out for %v (%d in flight from one address and port) while another device sends every 100 ms:\n\n", chattyFor, chattyK)
		fmt.Println("| server | source's answers/s, first 5 s | last 5 s | last/first | other device p50 | p99 | lost |")
		fmt.Println("|---|---|---|---|---|---|---|")
		for _, r := range chattyRuns {
			fmt.Printf("| %s | %.0f | %.0f | %.2f | %v | %v | %d |\n", r.server, r.first(), r.last(), r.last()/r.first(),
				r.other.p50.Round(time.Microsecond), r.other.p99.Round(time.Microsecond), r.other.lost)
		}
	}
	fmt.Printf("\nload average after: %s\n", loadavg())
	return nil
}

// pacedAll drives each server at rate uplinks/s from peers peers for d
// (after warmup unmeasured) and prints the round trips and the server's
// CPU per uplink, with coap-server+db's until every answered uplink is
// stored: what a fleet at a steady rate sees, where the closed loop of
// bench measures what a server can do.
func pacedAll(servers []string, peers int, rate float64, d, warmup time.Duration) error {
	fmt.Printf("coapbench: %.0f uplinks/s from %d long-lived peers, %v per server, a %d-byte Uplink, load average before: %s\n",
		rate, peers, d, len((&peer{device: "PACED-0000"}).uplink(1000)), loadavg())
	var results []result
	for _, name := range servers {
		srv, stored, err := startCounted(name)
		if err != nil {
			return err
		}
		r, err := pacedRun(srv, stored, peers, rate, d, warmup)
		srv.stop()
		if stored != nil {
			stored.close()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		results = append(results, result{server: name, peers: fmt.Sprintf("%d at %.0f/s", peers, rate), load: r.load, cpuPerReq: r.cpuPerReq})
		fmt.Printf("  %-14s %8.0f req/s  p50 %7v  p99 %7v  max %7v  CPU %6.1f µs/req  lost %d  (load %s)\n",
			name, r.load.rate(), r.load.p50, r.load.p99, r.load.max, micros(r.cpuPerReq), r.load.lost, loadavg())
	}
	fmt.Println()
	fmt.Println("| server | req/s | p50 | p99 | max | server CPU per request | p99 × libcoap's |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, r := range results {
		ratio := "–"
		for _, base := range results {
			if base.server == "libcoap" && base.load.p99 > 0 {
				ratio = fmt.Sprintf("%.1f×", float64(r.load.p99)/float64(base.load.p99))
			}
		}
		fmt.Printf("| %s | %.0f | %v | %v | %v | %.1f µs | %s |\n", r.server, r.load.rate(), r.load.p50.Round(time.Microsecond),
			r.load.p99.Round(time.Microsecond), r.load.max.Round(time.Microsecond), micros(r.cpuPerReq), ratio)
	}
	fmt.Printf("\nload average after: %s\n", loadavg())
	return nil
}

// pacedRun is one server's warmup and measured run at a steady rate.
func pacedRun(srv *server, stored *storedCounter, peers int, rate float64, d, warmup time.Duration) (result, error) {
	if warmup > 0 {
		wr := paced(srv.addr, peers, rate, warmup)
		if stored != nil {
			if _, err := stored.settle(wr.answered); err != nil {
				return result{}, err
			}
		}
	}
	cpu0, err := cpuTime(srv.pid)
	if err != nil {
		return result{}, err
	}
	lr := paced(srv.addr, peers, rate, d)
	if stored != nil {
		if _, err := stored.settle(lr.answered); err != nil {
			return result{}, err
		}
	}
	cpu1, err := cpuTime(srv.pid)
	if err != nil {
		return result{}, err
	}
	r := result{load: lr}
	if lr.answered > 0 {
		r.cpuPerReq = (cpu1 - cpu0) / time.Duration(lr.answered)
	}
	return r, nil
}

// soakAll runs one source flat out for d against each server and prints
// its throughput per 30 s window: flat when last/first stays near 1.
func soakAll(servers []string, inflight int, d time.Duration) error {
	fmt.Printf("coapbench soak: one source, %d in flight, %v per server, load average before: %s\n", inflight, d, loadavg())
	for _, name := range servers {
		srv, err := start(name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r, err := chatty(srv.addr, d, 30*time.Second, inflight, false)
		srv.stop()
		if err != nil {
			return fmt.Errorf("%s: soak: %w", name, err)
		}
		var windows []string
		for _, w := range r.windows {
			windows = append(windows, fmt.Sprintf("%.0f", w))
		}
		fmt.Printf("  %-12s answers/s per 30 s: %s; last/first %.2f, lost %d  (load %s)\n",
			name, strings.Join(windows, " "), r.last()/r.first(), r.lost, loadavg())
	}
	return nil
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// startCounted starts name; for coap-server+db also a counter of the rows
// it stored (nil for the others).
func startCounted(name string) (*server, *storedCounter, error) {
	var stored *storedCounter
	if name == "coap-server+db" {
		var err error
		if stored, err = newStoredCounter(); err != nil {
			return nil, nil, err
		}
	}
	srv, err := start(name)
	if err != nil {
		if stored != nil {
			stored.close()
		}
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return srv, stored, nil
}

// server is a running server process.
type server struct {
	addr string
	pid  int
	stop func()
}

// start runs a server in a child process and returns once it answers a
// ping... or rather a POST (libcoap answers pings too).
func start(name string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var cmd *exec.Cmd
	switch name {
	case "libcoap":
		bin, err := exec.LookPath("coap-server-notls")
		if err != nil {
			return nil, errors.New("coap-server-notls not installed (apt-get install libcoap3-bin)")
		}
		cmd = exec.Command(bin, "-d", "10", "-A", "127.0.0.1", "-p", strconv.Itoa(port), "-v", "0")
	case "go-coap", "coap-server", "coap-server+db", "lean":
		if name == "coap-server+db" && os.Getenv("COAPBENCH_DATABASE_URL") == "" {
			return nil, errors.New("coap-server+db needs COAPBENCH_DATABASE_URL: a Postgres database with the migrations applied")
		}
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cmd = exec.Command(self, "-serve", name, "-addr", addr)
		if strings.HasPrefix(name, "coap-server") && os.Getenv("GOMEMLIMIT") == "" {
			// The bench measures CPU per request at rates a 512 MB machine
			// sustains only for minutes: its bound on recent uplinks
			// (5/16 of memory; README, Durability) would refuse part of a
			// 3-minute soak. At 40,000 uplinks/s the 247 s window holds
			// 10 million answers (0.95 GB at 96 B): 12 GiB keeps every
			// uplink under the bound (the heap itself stays far below).
			cmd.Env = append(os.Environ(), "GOMEMLIMIT=12GiB")
		}
		if strings.HasPrefix(name, "coap-server") && os.Getenv("GOGC") == "" {
			cmd.Env = append(cmd.Environ(), "GOGC=200") // as fly.toml runs it
		}
	default:
		return nil, fmt.Errorf("unknown server %q (libcoap, go-coap, coap-server, coap-server+db, lean)", name)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for !answers(addr) {
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("%s does not answer on %s", name, addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return &server{addr: addr, pid: cmd.Process.Pid, stop: stop}, nil
}

func answers(addr string) bool {
	p, err := newPeer(addr)
	if err != nil {
		return false
	}
	defer p.close()
	_, err = p.post(0, 300*time.Millisecond)
	return err == nil
}

func freePort() (int, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

// cpuTime is the user+system CPU of pid so far (/proc/<pid>/stat, fields
// 14 and 15, in clock ticks of 1/100 s).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // after "pid (comm) "
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}

// runServer is the child process of a Go server, serving until SIGTERM.
func runServer(name, addr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if path := os.Getenv("COAPBENCH_CPUPROFILE"); path != "" {
		stop, err := profile(ctx, path, name, os.Getenv("COAPBENCH_CPUPROFILE_EVERY"))
		if err != nil {
			return err
		}
		defer stop()
	}
	switch name {
	case "go-coap":
		// go-coap's bare server: a mux answering POST /uplink 2.04, the
		// same options coap-server used (block-wise off).
		r := mux.NewRouter()
		_ = r.Handle("/uplink", mux.HandlerFunc(func(w mux.ResponseWriter, _ *mux.Message) {
			_ = w.SetResponse(codes.Changed, message.AppOctets, nil)
		}))
		ln, err := coapNet.NewListenUDP("udp", addr)
		if err != nil {
			return err
		}
		s := udp.NewServer(options.WithMux(r), options.WithBlockwise(false, 0, 0))
		go func() { <-ctx.Done(); s.Stop() }()
		return s.Serve(ln)
	case "coap-server", "coap-server+db":
		dir, err := os.MkdirTemp("", "coapbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		env := map[string]string{"COAP_ADDR": addr, "HTTP_ADDR": "127.0.0.1:0", "METRICS_ADDR": "off",
			"WS_TOKEN": "coapbench-token-0123456789", "DATA_DIR": dir, "LOG_LEVEL": "error"}
		if name == "coap-server+db" {
			env["DATABASE_URL"] = os.Getenv("COAPBENCH_DATABASE_URL")
		}
		cfg, err := app.FromEnv(func(k string) string { return env[k] })
		if err != nil {
			return err
		}
		return app.Run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), 10*time.Second)
	case "lean":
		conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			return err
		}
		discard := slog.New(slog.NewTextHandler(io.Discard, nil))
		h := &ingest.Handler{Stream: &noStream{}, Logger: discard, Metrics: ingest.NewMetrics(prometheus.NewRegistry()),
			Dedup: ingest.NewDedup(0, 0)}
		s, err := ingest.NewLeanServer(h, conn, ingest.LeanConfig{Metrics: ingest.NewLeanMetrics(prometheus.NewRegistry())})
		if err != nil {
			return err
		}
		go func() { <-ctx.Done(); s.Stop() }()
		return s.Serve()
	}
	return fmt.Errorf("unknown -serve %q", name)
}

// noStream takes every uplink at once and keeps nothing: the lean server
// measures the CoAP layer and the uplink logic without JetStream.
type noStream struct{ seq atomic.Uint64 }

func (*noStream) Stores() bool { return false }
func (*noStream) Behind() bool { return false }
func (*noStream) LogBehind(*livelog.Entry, string, func(uint64)) error {
	panic("noStream: not Behind")
}

func (*noStream) PublishUplink(context.Context, uplink.Accepted, []byte) error {
	return nil
}
func (s *noStream) Log(context.Context, *livelog.Entry, string) (uint64, bool, error) {
	return s.seq.Add(1), false, nil
}
func (*noStream) LogAsync(*livelog.Entry)           {}
func (*noStream) LogAsyncID(*livelog.Entry, string) {}
func (*noStream) Notify(*livelog.Entry)             {}

// profile writes the process's CPU profile to dir/<name>.pprof until the
// returned stop, or, with every (a duration), to dir/<name>-N.pprof, a new
// one each period.
func profile(ctx context.Context, dir, name, every string) (stop func(), err error) {
	var f *os.File
	open := func(file string) error {
		var err error
		if f, err = os.Create(filepath.Join(dir, file)); err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			f = nil
			return err
		}
		return nil
	}
	end := func() {
		pprof.StopCPUProfile()
		f.Close()
	}
	if every == "" {
		if err := open(name + ".pprof"); err != nil {
			return nil, err
		}
		return end, nil
	}
	period, err := time.ParseDuration(every)
	if err != nil || period <= 0 {
		return nil, fmt.Errorf("COAPBENCH_CPUPROFILE_EVERY=%q: want a positive duration such as 60s", every)
	}
	if err := open(name + "-1.pprof"); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for n := 2; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			end()
			if err := open(fmt.Sprintf("%s-%d.pprof", name, n)); err != nil {
				fmt.Fprintln(os.Stderr, "coapbench: profile:", err)
				return
			}
		}
	}()
	return func() {
		<-done
		if f != nil {
			end()
		}
	}, nil
}
