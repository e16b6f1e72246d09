// Package sim is the device simulator's core: a fleet of simulated NB-IoT
// devices, each on its own UDP socket, posting realistic uplinks to
// coap-server at a fixed total rate, optionally watching coap-server's /ws to
// measure how long an uplink takes to become a live-log frame. The command
// `go run ./scripts/simulate` and the latency benchmark both drive it.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Bounds of a run. They keep a typo from exhausting the machine: each device
// is a socket and a few goroutines.
const (
	MaxDevices = 10000
	MaxRate    = 100000 // uplinks per second
)

// Defaults of Config fields left zero.
const (
	DefaultTimeout   = 10 * time.Second // covers CON retransmissions at 2, 4 and 8 s (RFC 7252 §4.8)
	DefaultFrameWait = 2 * time.Second  // a frame takes ~1 ms on loopback; 2 s is generous
	DefaultPrefix    = "SIM"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("simulate: configuration")

// Config describes one run. Zero values take the defaults noted.
type Config struct {
	Addr     string        // coap-server's CoAP (or, with Keys, CoAPS) address, host:port
	Devices  int           // simulated devices; with Keys, 0 = one per key
	Rate     float64       // uplinks per second, all devices together
	Duration time.Duration // stop sending after this long; 0 = no time limit
	Count    int           // stop after this many uplinks; 0 = no count limit
	NON      bool          // send NON instead of CON
	Prefix   string        // device IDs are PREFIX-0001…; default "SIM"
	Keys     []Key         // DTLS PSKs: when set, devices are these and speak CoAPS

	WSURL   string // coap-server's /ws URL; empty = no frame matching
	WSToken string // WS_TOKEN, sent as a bearer token

	Timeout    time.Duration // per request and per DTLS handshake; default DefaultTimeout
	FrameWait  time.Duration // how long a frame may lag its 2.04; default DefaultFrameWait
	Seed       uint64        // payloads are reproducible for a given seed
	RebootProb float64       // chance a device reboots before an uplink; default 0.01, <0 = never

	Progress      io.Writer     // progress lines go here; nil = none
	ProgressEvery time.Duration // default 1 s
	Logger        *slog.Logger  // nil = discard
}

func (c *Config) setDefaults() error {
	if c.Addr == "" {
		return fmt.Errorf("%w: -addr is required", ErrConfig)
	}
	if len(c.Keys) > 0 {
		if c.Devices == 0 {
			c.Devices = len(c.Keys)
		}
		if c.Devices > len(c.Keys) {
			return fmt.Errorf("%w: -devices %d but the key file has %d devices", ErrConfig, c.Devices, len(c.Keys))
		}
	}
	if c.Devices < 1 || c.Devices > MaxDevices {
		return fmt.Errorf("%w: -devices must be 1–%d", ErrConfig, MaxDevices)
	}
	if !(c.Rate > 0 && c.Rate <= MaxRate) { // also refuses NaN
		return fmt.Errorf("%w: -rate must be above 0 and at most %d", ErrConfig, MaxRate)
	}
	if c.Duration < 0 || c.Count < 0 {
		return fmt.Errorf("%w: -duration and -count must not be negative", ErrConfig)
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !livelog.ValidDeviceID(deviceID(c.Prefix, MaxDevices)) {
		return fmt.Errorf("%w: -prefix must be letters, digits, '_' or '-', at most 58 characters", ErrConfig)
	}
	if c.WSURL != "" && !strings.HasPrefix(c.WSURL, "ws://") && !strings.HasPrefix(c.WSURL, "wss://") {
		return fmt.Errorf("%w: -ws must be a ws:// or wss:// URL", ErrConfig)
	}
	if c.WSURL != "" && c.WSToken == "" {
		return fmt.Errorf("%w: -ws needs a token (-ws-token or WS_TOKEN)", ErrConfig)
	}
	if c.RebootProb > 1 || c.RebootProb != c.RebootProb {
		return fmt.Errorf("%w: -reboot-prob must be at most 1", ErrConfig)
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.FrameWait <= 0 {
		c.FrameWait = DefaultFrameWait
	}
	if c.RebootProb == 0 {
		c.RebootProb = 0.01
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func deviceID(prefix string, i int) string { return fmt.Sprintf("%s-%04d", prefix, i) }

// Run simulates the fleet until the duration or count is reached or ctx
// ends, then waits for answers in flight (at most Timeout) and late frames
// (at most FrameWait), and returns the result. An error means the run could
// not start; what happens during a run is counted in the Result.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	stats := new(Stats)
	res := &Result{Devices: cfg.Devices, Mode: "CON"}
	if cfg.NON {
		res.Mode = "NON"
	}

	devices := make([]*Device, cfg.Devices)
	ours := make(map[string]bool, cfg.Devices)
	for i := range devices {
		id := deviceID(cfg.Prefix, i+1)
		if len(cfg.Keys) > 0 {
			id = cfg.Keys[i].DeviceID
		}
		devices[i] = NewDevice(id, cfg.Seed*uint64(MaxDevices)+uint64(i), cfg.RebootProb)
		ours[id] = true
	}
	dial := plainDialer(cfg.Addr, cfg.Logger)
	if len(cfg.Keys) > 0 {
		res.Mode += " over DTLS"
		keys := make(map[string][]byte, len(cfg.Keys))
		for _, k := range cfg.Keys {
			keys[k.DeviceID] = k.PSK
		}
		dial = dtlsDialer(cfg.Addr, keys, cfg.Timeout, cfg.Logger)
	}

	var match *matcher
	var sub *subscriber
	if cfg.WSURL != "" {
		match = newMatcher(stats, func(id string) bool { return ours[id] }, cfg.FrameWait)
		var err error
		if sub, err = subscribe(ctx, cfg.WSURL, cfg.WSToken, match); err != nil {
			return nil, err
		}
		defer sub.close()
	}

	senders, err := connect(ctx, devices, dial, cfg, stats, match)
	defer func() {
		for _, s := range senders {
			s.close()
		}
	}()
	if err != nil {
		return nil, err
	}

	sendCtx, cancel := context.WithCancel(ctx) // cancel: the count is reached
	defer cancel()
	if cfg.Duration > 0 {
		var cancelTimeout context.CancelFunc
		sendCtx, cancelTimeout = context.WithTimeout(sendCtx, cfg.Duration)
		defer cancelTimeout()
	}
	var budget *atomic.Int64
	if cfg.Count > 0 {
		budget = new(atomic.Int64)
		budget.Store(int64(cfg.Count))
	}

	start := time.Now()
	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	go func() {
		defer close(progressDone)
		progress(cfg, stats, match, start, res, stopProgress)
	}()

	// Device i first sends at i/rate, then every devices/rate: the fleet's
	// uplinks are spread evenly instead of arriving in bursts.
	interval := time.Duration(float64(cfg.Devices) / cfg.Rate * float64(time.Second))
	var wg sync.WaitGroup
	for i, s := range senders {
		s.budget, s.spent = budget, cancel
		offset := time.Duration(float64(i) / cfg.Rate * float64(time.Second))
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run(sendCtx, offset, interval)
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)

	if match != nil {
		// Even after Ctrl-C: frames of the last sends are still on their
		// way, and calling them missing would be wrong. FrameWait bounds it.
		match.drain()
		match.expire(true)
	}
	close(stopProgress)
	<-progressDone

	stats.snapshot(res)
	if match != nil {
		match.snapshot(res)
		if err := sub.Err(); err != nil {
			res.WSErr = err.Error()
		}
	}
	return res, nil
}

// connect dials every device, a few at a time (DTLS handshakes cost the
// server CPU; plain dials are instant). On error it returns what it opened.
func connect(ctx context.Context, devices []*Device, dial dialer, cfg Config, stats *Stats, match *matcher) ([]*sender, error) {
	senders := make([]*sender, len(devices))
	errs := make([]error, len(devices))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, d := range devices {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cc, err := dial(ctx, d)
			if err != nil {
				errs[i] = err
				return
			}
			senders[i] = &sender{dev: d, dial: dial, cc: cc, non: cfg.NON, timeout: cfg.Timeout,
				stats: stats, match: match, logger: cfg.Logger}
		}()
	}
	wg.Wait()
	opened := senders[:0]
	for _, s := range senders {
		if s != nil {
			opened = append(opened, s)
		}
	}
	return opened, errors.Join(errs...)
}

// progress prints a line every ProgressEvery until stop is closed, and
// meanwhile expires frames that are overdue so the missing count is live.
func progress(cfg Config, stats *Stats, match *matcher, start time.Time, base *Result, stop <-chan struct{}) {
	t := time.NewTicker(cfg.ProgressEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if match != nil {
			match.expire(false)
		}
		if cfg.Progress == nil {
			continue
		}
		r := Result{Devices: base.Devices, Mode: base.Mode, Elapsed: time.Since(start)}
		stats.snapshot(&r)
		stats.window(&r)
		if match != nil {
			match.snapshot(&r)
		}
		fmt.Fprintln(cfg.Progress, r.Progress())
	}
}
