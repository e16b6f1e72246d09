package dtls_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// The three benchmarks share one shape (server and clients on loopback,
// same ingest handler, storage a recorder) so their figures compare:
//
//	go test -run '^$' -bench . -benchtime 2s ./coap-server/dtls/
func benchFixture(b *testing.B) *fixture {
	b.Helper()
	// Each reading of the clock moves it on a minute: a session's answers
	// then expire as fast as it sends (MaxExchanges bounds a device's new
	// message IDs per 252 s, far below a benchmark's rate).
	var ticks atomic.Int64
	t0 := time.Now()
	f := newFixture(b, func(c *dtls.Config) {
		// The defaults would refuse a benchmark's handshake rate from one IP.
		c.Limits = dtls.LimitConfig{PerIPRate: 1e6, PerIPBurst: 1e6, PerIPInFlight: 1e6}
		c.Now = func() time.Time { return t0.Add(time.Duration(ticks.Add(1)) * time.Minute) }
	})
	f.provision(b, "bench", benchKey)
	return f
}

var benchKey = []byte("bench-key-0123456789")

func benchUplink(b *testing.B) []byte {
	temp := float32(21.5)
	p, err := proto.Marshal(&nbiotv1.Uplink{UplinkCount: 1, Temperature: &temp,
		Activity: &nbiotv1.Activity{Sleep: 3600, Modem: 40}})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func post(b *testing.B, cc *udpClient.Conn, payload []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(payload))
	if err != nil || resp.Code() != codes.Changed {
		b.Fatalf("POST: %v %v", resp, err)
	}
}

func BenchmarkDTLSHandshake(b *testing.B) {
	f := benchFixture(b)
	b.ResetTimer()
	for b.Loop() {
		sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		_, dc, err := dialGo(b, sock, f.srv.Addr(), "bench", benchKey, true)
		if err != nil {
			b.Fatal(err)
		}
		_ = dc.Close()
		_ = sock.Close()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

func BenchmarkUplinkDTLS(b *testing.B) {
	f := benchFixture(b)
	payload := benchUplink(b)
	// One session per identity: each parallel client is its own device.
	var next atomic.Int64
	for i := range 2 * runtime.GOMAXPROCS(0) {
		f.provision(b, fmt.Sprint("bench-", i), benchKey)
	}
	b.SetParallelism(2)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Error(err)
			return
		}
		cc, _, err := dialGo(b, sock, f.srv.Addr(), fmt.Sprint("bench-", next.Add(1)-1), benchKey, true)
		if err != nil {
			b.Error(err)
			return
		}
		for pb.Next() {
			post(b, cc, payload)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "uplinks/s")
}

// BenchmarkUplinkPlain is the same uplinks over plain CoAP, through the
// lean path coap-server serves it with.
func BenchmarkUplinkPlain(b *testing.B) {
	f := benchFixture(b)
	payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "bench", UplinkCount: 1})
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := ingest.NewLeanServer(f.handler, conn, ingest.LeanConfig{Metrics: ingest.NewLeanMetrics(prometheus.NewRegistry())})
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	b.Cleanup(srv.Stop)
	ln := conn
	b.SetParallelism(2)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		cc, err := udp.Dial(ln.LocalAddr().String())
		if err != nil {
			b.Error(err)
			return
		}
		defer cc.Close()
		for pb.Next() {
			post(b, cc, payload)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "uplinks/s")
}
