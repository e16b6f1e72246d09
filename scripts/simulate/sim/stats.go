package sim

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// Stats counts what a run did. Senders and the frame reader update it
// concurrently; Snapshot reads it at any time.
type Stats struct {
	sent     atomic.Uint64
	answered atomic.Uint64
	errors   atomic.Uint64
	timeouts atomic.Uint64
	byCode   [256]atomic.Uint64

	mu     sync.Mutex
	rtt    Histogram // send → CoAP response
	lat    Histogram // send → live-log frame on /ws
	rttWin Histogram // the same, since the last progress line
	latWin Histogram
}

func (s *Stats) answer(code codes.Code, rtt time.Duration) {
	s.answered.Add(1)
	s.byCode[uint8(code)].Add(1)
	s.mu.Lock()
	s.rtt.Record(rtt)
	s.rttWin.Record(rtt)
	s.mu.Unlock()
}

func (s *Stats) frame(latency time.Duration) {
	s.mu.Lock()
	s.lat.Record(latency)
	s.latWin.Record(latency)
	s.mu.Unlock()
}

// Percentiles summarises one histogram.
type Percentiles struct {
	N             uint64
	P50, P99, Max time.Duration
}

func percentiles(h *Histogram) Percentiles {
	return Percentiles{N: h.Count(), P50: h.Quantile(0.50), P99: h.Quantile(0.99), Max: h.Max()}
}

func (p Percentiles) p99() string {
	if p.N == 0 {
		return "-"
	}
	return round(p.P99).String()
}

// String is "p50 …  p99 …  max …", or "no samples".
func (p Percentiles) String() string {
	if p.N == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s  p99 %s  max %s", round(p.P50), round(p.P99), round(p.Max))
}

// round keeps three significant figures for display.
func round(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= 100*time.Microsecond:
		return d.Round(time.Microsecond)
	default:
		return d
	}
}

// Result is what a run reports at the end (and, partly, every second).
type Result struct {
	Devices  int
	Mode     string // "CON" or "NON", with "DTLS" when secured
	Elapsed  time.Duration
	Sent     uint64
	Answered uint64
	ByCode   map[string]uint64 // "2.04" → count
	Errors   uint64            // send failures other than timeouts
	Timeouts uint64            // no answer within the request timeout
	RTT      Percentiles       // send → CoAP response
	// RTTWindow and LatencyWindow cover only the last progress interval, so
	// a server that slows down over time shows it line by line.
	RTTWindow, LatencyWindow Percentiles

	// With a /ws subscriber only:
	WS         bool
	Frames     uint64      // frames matched to a send
	Missing    uint64      // answered 2.04 but no frame within the frame wait
	Unexpected uint64      // frames of our devices that matched no send
	Latency    Percentiles // send → frame
	WSErr      string      // why the subscription ended early, if it did
}

// Rate is uplinks sent per second over the run.
func (r *Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

// Progress is the one-line report printed every second.
func (r *Result) Progress() string {
	line := fmt.Sprintf("%6.1fs  sent %d  answered %d  errors %d  timeouts %d  rate %.0f/s  rtt p99 %s",
		r.Elapsed.Seconds(), r.Sent, r.Answered, r.Errors, r.Timeouts, r.Rate(), r.RTTWindow.p99())
	if r.WS {
		line += fmt.Sprintf("  frames %d  missing %d  latency p99 %s", r.Frames, r.Missing, r.LatencyWindow.p99())
	}
	return line
}

// Print writes the end-of-run summary.
func (r *Result) Print(w io.Writer) {
	codes := make([]string, 0, len(r.ByCode))
	for c, n := range r.ByCode {
		codes = append(codes, fmt.Sprintf("%s×%d", c, n))
	}
	sort.Strings(codes)
	fmt.Fprintf(w, "summary: %d devices, %s, %s\n", r.Devices, r.Mode, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  sent      %d (%.1f/s)\n", r.Sent, r.Rate())
	fmt.Fprintf(w, "  answered  %d  [%s]\n", r.Answered, strings.Join(codes, " "))
	fmt.Fprintf(w, "  errors    %d  timeouts %d\n", r.Errors, r.Timeouts)
	fmt.Fprintf(w, "  rtt       %s\n", r.RTT)
	if r.WS {
		fmt.Fprintf(w, "  frames    %d matched  %d missing  %d unexpected\n", r.Frames, r.Missing, r.Unexpected)
		fmt.Fprintf(w, "  uplink→frame latency  %s\n", r.Latency)
		if r.WSErr != "" {
			fmt.Fprintf(w, "  ws        ended early: %s\n", r.WSErr)
		}
	}
}

// snapshot fills the counters of r from s.
func (s *Stats) snapshot(r *Result) {
	r.Sent = s.sent.Load()
	r.Answered = s.answered.Load()
	r.Errors = s.errors.Load()
	r.Timeouts = s.timeouts.Load()
	r.ByCode = make(map[string]uint64)
	for c := range s.byCode {
		if n := s.byCode[c].Load(); n > 0 {
			r.ByCode[Dotted(codes.Code(c))] = n
		}
	}
	s.mu.Lock()
	r.RTT = percentiles(&s.rtt)
	r.Latency = percentiles(&s.lat)
	s.mu.Unlock()
}

// Dotted writes a CoAP code as "c.dd" (RFC 7252 §3), e.g. "2.04".
func Dotted(c codes.Code) string {
	return fmt.Sprintf("%d.%02d", uint8(c)>>5, uint8(c)&31)
}

// window fills r's window percentiles and starts a new window.
func (s *Stats) window(r *Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.RTTWindow, r.LatencyWindow = percentiles(&s.rttWin), percentiles(&s.latWin)
	s.rttWin, s.latWin = Histogram{}, Histogram{}
}
