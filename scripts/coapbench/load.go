package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"google.golang.org/protobuf/proto"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// loadResult is what one run of the load measured.
type loadResult struct {
	answered, lost int
	elapsed        time.Duration
	p50, p99, max  time.Duration
}

func (r loadResult) rate() float64 { return float64(r.answered) / r.elapsed.Seconds() }

// drive keeps k CON requests in flight for d, one per peer; with rotate >
// 0 each peer moves to a new source port every rotate requests.
func drive(addr string, k int, d time.Duration, rotate int) loadResult {
	var mu sync.Mutex
	var all []time.Duration
	var lost int
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for w := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rtts []time.Duration
			var myLost int
			var p *peer
			defer func() {
				if p != nil {
					p.close()
				}
				mu.Lock()
				all = append(all, rtts...)
				lost += myLost
				mu.Unlock()
			}()
			var err error
			if p, err = newPeer(addr); err != nil {
				return
			}
			p.device = fmt.Sprintf("BENCH-%04d", w)
			for n := 1; time.Now().Before(end); n++ {
				if rotate > 0 && n%rotate == 0 {
					p.close()
					dev := p.device
					var err error
					if p, err = newPeer(addr); err != nil {
						return
					}
					p.device = dev
				}
				rtt, err := p.post(uint32(n), 2*time.Second)
				if err != nil {
					myLost++
					continue
				}
				rtts = append(rtts, rtt)
			}
		}()
	}
	wg.Wait()
	r := loadResult{answered: len(all), lost: lost, elapsed: time.Since(start)}
	if len(all) > 0 {
		slices.Sort(all)
		r.p50 = all[len(all)/2]
		r.p99 = all[len(all)*99/100]
	}
	return r
}

// peer is one device's UDP socket.
type peer struct {
	conn   *net.UDPConn
	device string
	mid    uint16
	out    []byte
	in     []byte
	msg    message.Message
}

func newPeer(addr string) (*peer, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		return nil, err
	}
	return &peer{conn: c, device: "BENCH-PROBE", mid: uint16(time.Now().UnixNano()), out: make([]byte, 512), in: make([]byte, 2048),
		msg: message.Message{Options: make(message.Options, 0, 8)}}, nil
}

func (p *peer) close() { _ = p.conn.Close() }

// uplink is a real Uplink of 101 bytes or so: a heartbeat with a short
// Wi-Fi scan, as devices send between fixes.
func (p *peer) uplink(count uint32) []byte {
	temp, mv := float32(21.37), uint32(3612)
	b, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: p.device, UplinkCount: count, Temperature: &temp, BatteryMv: &mv,
		Activity: &nbiotv1.Activity{Sleep: 3520, Modem: 23, Other: 57},
		WifiAps: []*nbiotv1.WifiAp{
			{Bssid: []byte{0, 0x1a, 0x2b, 0x3c, 0x4d, 1}, Rssi: -52, Channel: 1},
			{Bssid: []byte{0, 0x1a, 0x2b, 0x3c, 0x4d, 2}, Rssi: -61, Channel: 6},
			{Bssid: []byte{0, 0x1a, 0x2b, 0x3c, 0x4d, 3}, Rssi: -70, Channel: 11},
		}})
	return b
}

var (
	errTimeout = errors.New("no answer")
	// errRefused: an answer other than 2.04 (a 5.03 costs the server
	// less than an accepted uplink, so it must not count as an answer).
	errRefused = errors.New("answered, but not 2.04")
)

// encode is a CON POST /uplink of uplink count with message ID mid, in out.
func (p *peer) encode(mid uint16, count uint32, out []byte) ([]byte, error) {
	m := message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: int32(mid),
		Token:   []byte{byte(mid >> 8), byte(mid), 0x42, 0x17},
		Payload: p.uplink(count),
		Options: message.Options{{ID: message.URIPath, Value: []byte("uplink")}, {ID: message.ContentFormat, Value: []byte{42}}}}
	n, err := coder.DefaultCoder.Encode(m, out)
	return out[:n], err
}

// post sends a CON POST /uplink and waits for its ACK.
func (p *peer) post(count uint32, timeout time.Duration) (time.Duration, error) {
	p.mid++
	b, err := p.encode(p.mid, count, p.out)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := p.conn.Write(b); err != nil {
		return 0, err
	}
	deadline := start.Add(timeout)
	_ = p.conn.SetReadDeadline(deadline)
	for {
		k, err := p.conn.Read(p.in)
		if err != nil {
			return 0, errTimeout
		}
		p.msg.Options = p.msg.Options[:0]
		if _, err := coder.DefaultCoder.Decode(p.in[:k], &p.msg); err != nil {
			continue
		}
		if p.msg.Type == message.Acknowledgement && p.msg.MessageID == int32(p.mid) {
			if p.msg.Code != codes.Changed {
				return 0, errRefused
			}
			return time.Since(start), nil
		}
	}
}

// chattyResult is what one chatty-source run measured.
type chattyResult struct {
	window  time.Duration
	windows []float64 // the source's answers/s, per window
	lost    int       // the source's requests unanswered within 2 s
	other   loadResult
}

// first and last are the source's answers/s in its first and last whole
// windows.
func (r chattyResult) first() float64 { return r.windows[0] }
func (r chattyResult) last() float64  { return r.windows[len(r.windows)-1] }

// chatty drives one source flat out for d: one socket (one address and
// port, as a device behind a NAT or an operator's relay looks to the
// server) keeping inflight CON uplinks outstanding, each answered one
// replaced at once. With other set, a second device meanwhile sends one
// CON uplink every 100 ms from a socket of its own; its round trips are
// r.other.
func chatty(addr string, d, window time.Duration, inflight int, other bool) (chattyResult, error) {
	src, err := newPeer(addr)
	if err != nil {
		return chattyResult{}, err
	}
	defer src.close()
	src.device = "CHATTY-0001"
	r := chattyResult{window: window, windows: make([]float64, int(d/window))}
	counts := make([]atomic.Int64, len(r.windows)+1)
	var (
		mu      sync.Mutex
		waiting = map[uint16]chan struct{}{}
		mids    atomic.Uint32
		lost    atomic.Int64
		wg      sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(d)
	go func() { // the source's answers, matched to their requests by message ID
		in := make([]byte, 2048)
		m := message.Message{Options: make(message.Options, 0, 8)}
		for {
			n, err := src.conn.Read(in)
			if err != nil {
				return
			}
			m.Options = m.Options[:0]
			if _, err := coder.DefaultCoder.Decode(in[:n], &m); err != nil || m.Type != message.Acknowledgement {
				continue
			}
			mu.Lock()
			ch := waiting[uint16(m.MessageID)]
			delete(waiting, uint16(m.MessageID))
			mu.Unlock()
			if ch != nil {
				ch <- struct{}{}
			}
		}
	}()
	// Message IDs wrap within EXCHANGE_LIFETIME at this rate, as they do
	// for any source over 265 uplinks/s (RFC 7252 §4.4); the count in the
	// payload does not, so every request is a new uplink.
	var counts32 atomic.Uint32
	mids.Store(uint32(time.Now().UnixNano()))
	for range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]byte, 512)
			ch := make(chan struct{}, 1)
			timer := time.NewTimer(time.Hour)
			for time.Now().Before(end) {
				mid := uint16(mids.Add(1))
				b, err := src.encode(mid, counts32.Add(1), out)
				if err != nil {
					return
				}
				mu.Lock()
				waiting[mid] = ch
				mu.Unlock()
				if _, err := src.conn.Write(b); err != nil {
					return
				}
				timer.Reset(2 * time.Second)
				select {
				case <-ch:
					if i := int(time.Since(start) / window); i < len(counts) {
						counts[i].Add(1)
					}
				case <-timer.C:
					lost.Add(1)
					mu.Lock()
					delete(waiting, mid)
					mu.Unlock()
				}
			}
		}()
	}
	if other {
		// In a process of its own, so its round trips are not its wait for
		// the scheduler behind the source's goroutines.
		r.other, err = probeProcess(addr, time.Until(end))
		if err != nil {
			return r, err
		}
	}
	wg.Wait()
	for i := range r.windows {
		r.windows[i] = float64(counts[i].Load()) / window.Seconds()
	}
	r.lost = int(lost.Load())
	return r, nil
}

// probe sends one CON uplink every 100 ms for d from a socket of its own
// and returns the round trips.
func probe(addr string, d time.Duration) (loadResult, error) {
	p, err := newPeer(addr)
	if err != nil {
		return loadResult{}, err
	}
	defer p.close()
	p.device = "OTHER-0001"
	var r loadResult
	var rtts []time.Duration
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := uint32(1); time.Since(start) < d; n++ {
		<-tick.C
		rtt, err := p.post(n, 2*time.Second)
		if err != nil {
			r.lost++
			continue
		}
		rtts = append(rtts, rtt)
	}
	r.answered, r.elapsed = len(rtts), time.Since(start)
	if len(rtts) > 0 {
		slices.Sort(rtts)
		r.p50, r.p99 = rtts[len(rtts)/2], rtts[len(rtts)*99/100]
	}
	return r, nil
}

// probeProcess runs probe in a child process (coapbench -probe) and reads
// back its result.
func probeProcess(addr string, d time.Duration) (loadResult, error) {
	self, err := os.Executable()
	if err != nil {
		return loadResult{}, err
	}
	out, err := exec.Command(self, "-probe", addr, "-duration", d.String()).Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("probe: %w", err)
	}
	var r loadResult
	var p50, p99, elapsed int64
	if _, err := fmt.Sscan(string(out), &r.answered, &r.lost, &p50, &p99, &elapsed); err != nil {
		return r, fmt.Errorf("probe said %q: %w", out, err)
	}
	r.p50, r.p99, r.elapsed = time.Duration(p50), time.Duration(p99), time.Duration(elapsed)
	return r, nil
}

// paced sends rate CON uplinks per second in total for d from peers
// long-lived peers, each on its own schedule (open loop: a late answer
// does not move the next send; a peer waits only for its own previous
// answer), as a fleet of devices reporting does. It returns the round
// trips; max is r.max.
func paced(addr string, peers int, rate float64, d time.Duration) loadResult {
	var mu sync.Mutex
	var all []time.Duration
	var lost int
	var wg sync.WaitGroup
	every := time.Duration(float64(peers) / rate * float64(time.Second))
	start := time.Now()
	for w := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := newPeer(addr)
			if err != nil {
				mu.Lock()
				lost++
				mu.Unlock()
				return
			}
			defer p.close()
			p.device = fmt.Sprintf("PACED-%04d", w)
			var rtts []time.Duration
			myLost := 0
			// Spread the peers' schedules over one period.
			next := start.Add(every * time.Duration(w) / time.Duration(peers))
			for n := uint32(1); next.Sub(start) < d; n++ {
				time.Sleep(time.Until(next))
				next = next.Add(every)
				rtt, err := p.post(n, 2*time.Second)
				if err != nil {
					myLost++
					continue
				}
				rtts = append(rtts, rtt)
			}
			mu.Lock()
			all = append(all, rtts...)
			lost += myLost
			mu.Unlock()
		}()
	}
	wg.Wait()
	r := loadResult{answered: len(all), lost: lost, elapsed: time.Since(start)}
	if len(all) > 0 {
		slices.Sort(all)
		r.p50, r.p99, r.max = all[len(all)/2], all[len(all)*99/100], all[len(all)-1]
	}
	return r
}
