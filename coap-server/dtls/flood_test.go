package dtls_test

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// clientHello captures the first datagram a pion client sends: a real
// ClientHello without a cookie, as a flood would replay it.
func clientHello(t testing.TB) []byte {
	t.Helper()
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	dc, err := piondtls.ClientWithOptions(sock, sink.LocalAddr().(*net.UDPAddr),
		piondtls.WithPSK(func([]byte) ([]byte, error) { return []byte("flood-key-0123456789"), nil }),
		piondtls.WithPSKIdentityHint([]byte("flood")),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = dc.HandshakeContext(ctx) }()
	defer func() { cancel(); _ = dc.Close() }()
	buf := make([]byte, 2048)
	_ = sink.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := sink.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf[:n]...)
}

// flood sends hello to server from spoofed sources: each from its own
// loopback address (127.1.0.1, 127.1.0.2, …, all of 127.0.0.0/8 is local
// on Linux), through a socket closed at once so nobody ever answers the
// HelloVerifyRequest, as with a forged source address. It sends rate
// datagrams a second until stop is closed; sent counts them so far, wait
// waits for the end and returns the total.
func flood(t testing.TB, server *net.UDPAddr, hello []byte, rate int, stop <-chan struct{}) (sent func() int64, wait func() int64) {
	t.Helper()
	var n64 atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		n := uint32(0)
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for range rate / 100 {
				n++
				ip := net.IPv4(127, 1+byte(n>>16%200), byte(n>>8), byte(n))
				if byte(n) == 0 || byte(n) == 255 {
					continue
				}
				s, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
				if err != nil {
					continue
				}
				if _, err := s.WriteToUDP(hello, server); err == nil {
					n64.Add(1)
				}
				_ = s.Close()
			}
		}
	}()
	return n64.Load, func() int64 { wg.Wait(); return n64.Load() }
}

// A ClientHello flood from thousands of spoofed addresses, more than every
// handshake slot (InFlight 1024 + per-address 32), cannot starve a real
// device: its handshake completes while the flood goes on, and the flood
// holds no handshake slot. The bound is 10 s, half the handshake timeout
// (a starved handshake waits that out), with room for pion's 1 s flight
// resend under -race on 2 busy cores; the time taken is logged (tens of
// milliseconds when idle).
func TestHelloFloodCannotStarveAHandshake(t *testing.T) {
	f := newFixture(t, nil)
	key := []byte("starve-key-0123456789")
	f.provision(t, "dev-starve", key)
	hello := clientHello(t)
	stop := make(chan struct{})
	// 500 a second: past every handshake slot (1,056) within 3 s, each
	// held for the 20 s handshake timeout if it counted.
	sentSoFar, wait := flood(t, f.srv.Addr(), hello, 500, stop)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wait()
	}()
	answered := func() float64 { return testutil.ToFloat64(f.metrics.HelloVerify.WithLabelValues("none")) }
	testwait.For(t, "the server to answer more spoofed hellos than the old limits", func() bool {
		return sentSoFar() > 1100 && answered() > 1100
	}, testwait.Within(30*time.Second))

	start := time.Now()
	_, dc, err := dialGoWithin(t, udpSocket(t), f.srv.Addr(), "dev-starve", key, true, 10*time.Second)
	took := time.Since(start)
	close(stop)
	sent := wait()
	if err != nil {
		t.Fatalf("handshake during a flood of %d ClientHellos: %v (after %v); %v answered", sent, err, took, answered())
	}
	_ = dc.Close()
	t.Logf("handshake took %v during a flood of %d spoofed ClientHellos (%v answered); in flight now %d",
		took, sent, answered(), f.srv.InFlight())
	if n := f.srv.InFlight(); n > 1 {
		t.Errorf("%d handshakes counted in flight: spoofed hellos must not count", n)
	}
}

// Legitimate handshakes a second with and without a spoofed ClientHello
// flood, in one run:
//
//	go test -run '^$' -bench HandshakeFlood -benchtime 200x ./coap-server/dtls/
func BenchmarkDTLSHandshakeFlood(b *testing.B) {
	f := benchFixture(b)
	hello := clientHello(b)
	handshakes := func(b *testing.B) {
		for b.Loop() {
			sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			_, dc, err := dialGoWithin(b, sock, f.srv.Addr(), "bench", benchKey, true, 10*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			_ = dc.Close()
			_ = sock.Close()
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
	}
	b.Run("quiet", handshakes)
	for _, rate := range []int{1000, 3000} {
		b.Run(fmt.Sprintf("flood_%d_per_s", rate), func(b *testing.B) {
			stop := make(chan struct{})
			sent, wait := flood(b, f.srv.Addr(), hello, rate, stop)
			deadline := time.Now().Add(10 * time.Second)
			for sent() < int64(rate) && time.Now().Before(deadline) { // a second of flood first
				time.Sleep(10 * time.Millisecond)
			}
			start, before := time.Now(), sent()
			handshakes(b)
			floodRate := float64(sent()-before) / time.Since(start).Seconds()
			close(stop)
			wait()
			b.ReportMetric(floodRate, "spoofed_hellos/s")
		})
	}
}

// What a spoofed ClientHello leaves behind once answered, measured on the
// heap and stacks (it was 43 KiB a hello when pion sent the
// HelloVerifyRequest and kept a conn for each):
//
//	go test -run '^$' -bench SpoofedHelloMemory -benchtime 1x ./coap-server/dtls/
func BenchmarkSpoofedHelloMemory(b *testing.B) {
	f := newFixture(b, nil)
	hello := clientHello(b)
	answered := func() float64 { return testutil.ToFloat64(f.metrics.HelloVerify.WithLabelValues("none")) }
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	stop := make(chan struct{})
	sent, wait := flood(b, f.srv.Addr(), hello, 2000, stop)
	for sent() < 2000 {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	n := wait()
	deadline := time.Now().Add(10 * time.Second)
	for answered() < float64(n) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grow := float64(after.HeapInuse+after.StackInuse) - float64(before.HeapInuse+before.StackInuse)
	b.ReportMetric(answered(), "hellos_answered")
	b.ReportMetric(float64(f.srv.Peers()), "peers")
	b.ReportMetric(grow/answered(), "bytes/hello")
}
