package main

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
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
	p50, p99       time.Duration
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

var errTimeout = errors.New("no answer")

// post sends a CON POST /uplink and waits for its ACK.
func (p *peer) post(count uint32, timeout time.Duration) (time.Duration, error) {
	p.mid++
	m := message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: int32(p.mid),
		Token:   []byte{byte(p.mid >> 8), byte(p.mid), 0x42, 0x17},
		Payload: p.uplink(count),
		Options: message.Options{{ID: message.URIPath, Value: []byte("uplink")}, {ID: message.ContentFormat, Value: []byte{42}}}}
	n, err := coder.DefaultCoder.Encode(m, p.out)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := p.conn.Write(p.out[:n]); err != nil {
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
			return time.Since(start), nil
		}
	}
}
