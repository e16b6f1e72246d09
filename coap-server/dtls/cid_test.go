package dtls_test

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"google.golang.org/protobuf/proto"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// natProxy is a loopback UDP relay playing a NAT: the device talks to front,
// and the server sees the datagrams come from upstream, a socket that
// Rebind replaces, as a NAT does when its binding expires while the device
// sleeps.
type natProxy struct {
	front  *net.UDPConn
	server *net.UDPAddr

	mu       sync.Mutex
	upstream *net.UDPConn
	device   *net.UDPAddr
	wg       sync.WaitGroup
}

func newNATProxy(t *testing.T, server *net.UDPAddr) *natProxy {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &natProxy{front: front, server: server}
	p.Rebind(t)
	p.wg.Add(1)
	go p.deviceToServer()
	t.Cleanup(func() {
		_ = front.Close()
		p.mu.Lock()
		_ = p.upstream.Close()
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// Rebind moves the proxy to a new source port towards the server.
func (p *natProxy) Rebind(t *testing.T) {
	t.Helper()
	up, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	old := p.upstream
	p.upstream = up
	p.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	p.wg.Add(1)
	go p.serverToDevice(up)
}

func (p *natProxy) Addr() *net.UDPAddr { return p.front.LocalAddr().(*net.UDPAddr) }

// UpstreamPort is the source port the server currently sees.
func (p *natProxy) UpstreamPort() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.upstream.LocalAddr().(*net.UDPAddr).Port
}

func (p *natProxy) deviceToServer() {
	defer p.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := p.front.ReadFromUDP(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.device = from
		up := p.upstream
		p.mu.Unlock()
		_, _ = up.WriteToUDP(buf[:n], p.server)
	}
}

func (p *natProxy) serverToDevice(up *net.UDPConn) {
	defer p.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, _, err := up.ReadFromUDP(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		dev := p.device
		p.mu.Unlock()
		if dev != nil {
			_, _ = p.front.WriteToUDP(buf[:n], dev)
		}
	}
}

func postGo(t *testing.T, cc *udpClient.Conn, u *nbiotv1.Uplink) codes.Code {
	t.Helper()
	b, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST /uplink: %v", err)
	}
	return resp.Code()
}

// RFC 9146: with a Connection ID the server routes records by CID, not by
// address, so the session survives the NAT rebinding without a handshake.
func TestConnectionIDSurvivesNATRebinding(t *testing.T) {
	f := newFixture(t, nil)
	key := []byte{0x10, 0x21, 0x32, 0x43, 0x54, 0x65, 0x76, 0x87, 0x98, 0xa9, 0xba, 0xcb, 0xdc, 0xed, 0xfe, 0x0f}
	f.provision(t, "dev-cid", key)
	ws := f.dialWS(t, "dev-cid")
	proxy := newNATProxy(t, f.srv.Addr())

	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cc, _, err := dialGo(t, sock, proxy.Addr(), "dev-cid", key, true)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("first uplink: %v", code)
	}
	before := proxy.UpstreamPort()
	proxy.Rebind(t)
	if proxy.UpstreamPort() == before {
		t.Fatal("proxy did not change its source port")
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 2}); code != codes.Changed {
		t.Fatalf("uplink after rebinding: %v", code)
	}
	for _, want := range []string{"Received uplink #1", "Received uplink #2"} {
		m, err := readFrame(t, ws, 5*time.Second)
		if err != nil || m["message"] != want {
			t.Fatalf("frame %v (%v), want %q", m, err, want)
		}
	}
	if ok, failed := f.handshakes("ok"), f.handshakes("failed"); ok != 1 || failed != 0 {
		t.Errorf("handshakes ok=%v failed=%v, want exactly the first one", ok, failed)
	}
}

// The control: without a Connection ID the same rebinding loses the
// session (the server sees records from an unknown address and drops
// them), which is what the test above proves CID avoids.
func TestWithoutConnectionIDRebindingLosesSession(t *testing.T) {
	f := newFixture(t, nil)
	key := []byte("no-cid-key-0123456789")
	f.provision(t, "dev-nocid", key)
	proxy := newNATProxy(t, f.srv.Addr())
	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cc, _, err := dialGo(t, sock, proxy.Addr(), "dev-nocid", key, false)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if code := postGo(t, cc, &nbiotv1.Uplink{UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("first uplink: %v", code)
	}
	proxy.Rebind(t)
	b, _ := proto.Marshal(&nbiotv1.Uplink{UplinkCount: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b)); err == nil {
		t.Fatalf("uplink after rebinding without CID answered %v; the CID test proves nothing", resp.Code())
	}
}
