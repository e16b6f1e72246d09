package app_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// BenchmarkUplinkToBrowser measures CoAP send → browser frame through both
// hops (device → coap-server → relay → browser) at 200 uplinks/s with 50
// browsers watching one device. b.N is the number of uplinks; run with
// -benchtime=2000x for a stable p99 (10 s of traffic).
//
//	go test -run '^$' -bench UplinkToBrowser -benchtime 2000x ./relay/app
func BenchmarkUplinkToBrowser(b *testing.B) {
	const viewers, rate = 50, 200
	c := startCoAP(b, "", "")
	r := startRelay(b, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	cc := dialCoAP(b, c)
	sent := make([]atomic.Int64, b.N)
	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N*viewers)
	var direct []time.Duration
	var wg sync.WaitGroup
	// One more reader straight on coap-server's /ws, as a reference for
	// the first hop alone.
	dws, _, err := websocket.DefaultDialer.Dial("ws://"+c.HTTPAddr().String()+"/ws?deviceId=BENCH",
		map[string][]string{"Authorization": {"Bearer " + wsToken}})
	if err != nil {
		b.Fatal(err)
	}
	defer dws.Close()
	for v := range viewers + 1 {
		ws := dws
		if v < viewers {
			ws = mustDial(b, r, "BENCH", dialOpts{})
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, b.N)
			var f struct {
				Data struct {
					Count int `json:"uplink_count"`
				} `json:"data"`
			}
			for range b.N {
				_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
				_, msg, err := ws.ReadMessage()
				got := time.Now()
				if err != nil {
					b.Errorf("viewer: %v", err)
					return
				}
				if err := json.Unmarshal(msg, &f); err != nil || f.Data.Count >= b.N {
					b.Errorf("frame %q: %v", msg, err)
					return
				}
				local = append(local, got.Sub(time.Unix(0, sent[f.Data.Count].Load())))
			}
			mu.Lock()
			if ws == dws {
				direct = local
			} else {
				lat = append(lat, local...)
			}
			mu.Unlock()
		}()
	}
	b.ResetTimer()
	tick := time.NewTicker(time.Second / rate)
	for i := range b.N {
		<-tick.C
		sent[i].Store(time.Now().UnixNano())
		sendUplink(b, cc, "BENCH", uint32(i))
	}
	tick.Stop()
	wg.Wait()
	b.StopTimer()
	if len(lat) != b.N*viewers {
		b.Fatalf("%d deliveries, want %d", len(lat), b.N*viewers)
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/1e6, "max-ms")
	b.ReportMetric(float64(len(lat)), "deliveries")
	if len(direct) > 0 {
		slices.Sort(direct)
		b.ReportMetric(float64(direct[int(0.99*float64(len(direct)-1))])/1e6, "coap-ws-only-p99-ms")
	}
}

// BenchmarkIdleBrowsers opens 5,000 idle /device-logs connections (over
// 50 devices) and reports the relay's memory per connection and the time
// to accept them. The clients are raw sockets doing the handshake by hand,
// so they add only their socket to the process's memory (included in the
// figure: it is an upper bound). Run with -benchtime=1x.
func BenchmarkIdleBrowsers(b *testing.B) {
	const conns, devices = 5000, 50
	raiseFDLimit(b, 2*conns+200)
	c := startCoAP(b, "", "")
	r := startRelay(b, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	addr := r.HTTPAddr().String()
	for range b.N {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		clients := make([]net.Conn, conns)
		var wg sync.WaitGroup
		var failed atomic.Int64
		const workers = 16
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < conns; i += workers {
					nc, err := rawHandshake(addr, "DEV"+string(rune('A'+i%devices/26))+string(rune('a'+i%devices%26)))
					if err != nil {
						failed.Add(1)
						continue
					}
					clients[i] = nc
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		if failed.Load() > 0 {
			b.Fatalf("%d handshakes failed", failed.Load())
		}
		testwait.For(b, "relay to count every connection", func() bool {
			return gauge(b, r.Metrics, "nbiot_relay_connections") == conns
		})
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		used := float64((after.HeapInuse + after.StackInuse) - (before.HeapInuse + before.StackInuse))
		b.ReportMetric(used/conns/1024, "KiB/conn")
		b.ReportMetric(float64(after.StackInuse-before.StackInuse)/conns/1024, "stack-KiB/conn")

		b.ReportMetric(float64(elapsed.Milliseconds()), "ms-to-accept-5000")
		b.ReportMetric(float64(elapsed.Microseconds())/conns, "µs/conn")
		for _, nc := range clients {
			_ = nc.Close()
		}
		testwait.For(b, "relay to see every connection close", func() bool {
			return gauge(b, r.Metrics, "nbiot_relay_connections") == 0
		})
	}
}

// rawHandshake opens a WebSocket with the fewest bytes a client can hold
// (RFC 6455 §4.1), and checks the 101.
func rawHandshake(addr, device string) (net.Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	req := "GET /device-logs?deviceId=" + device + " HTTP/1.1\r\nHost: " + addr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := nc.Write([]byte(req)); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 512)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, " 101 ") {
		nc.Close()
		return nil, &net.OpError{Op: "handshake", Err: websocket.ErrBadHandshake}
	}
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			nc.Close()
			return nil, err
		}
		if bytes.Equal(line, []byte("\r\n")) {
			break
		}
	}
	_ = nc.SetDeadline(time.Time{})
	return nc, nil
}

func raiseFDLimit(b *testing.B, need uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatal(err)
	}
	if rl.Cur < need {
		rl.Cur = min(need, rl.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < need {
			b.Skipf("file descriptor limit %d < %d and cannot be raised", rl.Cur, need)
		}
	}
}
