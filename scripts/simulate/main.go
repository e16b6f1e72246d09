// Command simulate runs a fleet of simulated NB-IoT devices against
// coap-server: N devices, each on its own UDP socket, posting realistic
// uplinks at a total rate, with a progress line every second and a summary
// at the end (sent, answered by code, errors, round-trip p50/p99/max). With
// -ws it subscribes to coap-server's /ws first and reports how long each
// uplink took to become a live-log frame, and which frames never came.
//
//	go run ./scripts/simulate -devices 100 -rate 1000 -duration 10s \
//	    -ws ws://127.0.0.1:8080/ws   # token from WS_TOKEN
//
// It stops by itself after -duration or -count, and on Ctrl-C (a second
// Ctrl-C aborts at once). -duration 0 without -count runs until Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nbiot-live/nbiot-live/scripts/simulate/sim"
)

const usage = `usage: go run ./scripts/simulate [-addr HOST:PORT] [-devices N] [-rate R]
       [-duration D | -count C] [-non] [-prefix SIM] [-ws URL [-ws-token TOKEN]]
       [-dtls-key-file FILE] [-timeout D] [-seed S] [-reboot-prob P] [-v]

Environment: SIM_ADDR (default for -addr), SIM_WS (for -ws), WS_TOKEN (for
-ws-token, so the token need not be on a command line).

`

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, keyFile, verbose, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "simulate:", err)
		return 2
	}
	if keyFile != "" {
		f, err := os.Open(keyFile)
		if err != nil {
			fmt.Fprintln(stderr, "simulate: -dtls-key-file:", err)
			return 2
		}
		cfg.Keys, err = sim.ParseKeys(f)
		_ = f.Close()
		if err != nil {
			fmt.Fprintln(stderr, "simulate:", err)
			return 2
		}
	}
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Progress = stdout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C now ends the process at once
	}()
	limit := "until Ctrl-C"
	switch {
	case cfg.Count > 0 && cfg.Duration > 0:
		limit = fmt.Sprintf("%d uplinks or %s", cfg.Count, cfg.Duration)
	case cfg.Count > 0:
		limit = fmt.Sprintf("%d uplinks", cfg.Count)
	case cfg.Duration > 0:
		limit = cfg.Duration.String()
	}
	devices := cfg.Devices
	if devices == 0 {
		devices = len(cfg.Keys)
	}
	fmt.Fprintf(stdout, "simulate: %d devices → %s at %g uplinks/s, %s\n", devices, cfg.Addr, cfg.Rate, limit)

	res, err := sim.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	res.Print(stdout)
	if res.Sent > 0 && res.Answered == 0 {
		return 1 // nothing answered: the server is not there
	}
	return 0
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (cfg sim.Config, keyFile string, verbose bool, err error) {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.Addr, "addr", or(getenv("SIM_ADDR"), "127.0.0.1:5683"), "coap-server's CoAP address (CoAPS address with -dtls-key-file) (env SIM_ADDR)")
	fs.IntVar(&cfg.Devices, "devices", 10, "simulated devices, each with its own UDP socket (IDs PREFIX-0001…); with -dtls-key-file 0 = one per key")
	fs.Float64Var(&cfg.Rate, "rate", 10, "uplinks per second, all devices together (over DTLS, coap-server takes at most one per 8 s per device sustained, bursts of 32)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "stop sending after this long; 0 = until Ctrl-C (or -count)")
	fs.IntVar(&cfg.Count, "count", 0, "stop after this many uplinks (then -duration is no limit unless also given)")
	fs.BoolVar(&cfg.NON, "non", false, "send NON (non-confirmable) requests instead of CON")
	fs.StringVar(&cfg.Prefix, "prefix", sim.DefaultPrefix, "device ID prefix")
	fs.StringVar(&cfg.WSURL, "ws", getenv("SIM_WS"), "coap-server's /ws URL, e.g. ws://127.0.0.1:8080/ws: match frames to uplinks (env SIM_WS)")
	fs.StringVar(&cfg.WSToken, "ws-token", "", "bearer token for -ws (default: env WS_TOKEN, which keeps it off the command line)")
	fs.StringVar(&keyFile, "dtls-key-file", "", "speak CoAPS: file of 'DEVICE_ID HEXKEY' lines (PSK identity = device ID)")
	fs.DurationVar(&cfg.Timeout, "timeout", sim.DefaultTimeout, "per-request timeout (CON retransmissions happen within it)")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "payload random seed (runs with the same seed send the same payloads)")
	fs.Float64Var(&cfg.RebootProb, "reboot-prob", 0.01, "chance a device reboots before an uplink (0 = never)")
	fs.BoolVar(&verbose, "v", false, "log connection errors (debug)")
	if err = fs.Parse(args); err != nil {
		return cfg, "", false, err
	}
	if fs.NArg() > 0 {
		return cfg, "", false, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["count"] && !set["duration"] {
		cfg.Duration = 0 // -count alone: the count is the limit
	}
	if set["reboot-prob"] && cfg.RebootProb == 0 {
		cfg.RebootProb = -1 // sim.Config: 0 takes the default, negative is never
	}
	if cfg.WSToken == "" {
		cfg.WSToken = getenv("WS_TOKEN")
	}
	if keyFile != "" && !set["devices"] {
		cfg.Devices = 0 // one device per key
	}
	return cfg, keyFile, verbose, nil
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
