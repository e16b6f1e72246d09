package dtls_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// finishedHold relays a client's datagrams to the server record by record,
// and the server's back, but holds the client's epoch-1 records (its
// Finished) until release: the server has looked the PSK up
// (ClientKeyExchange) and waits, as it would for a client that holds its
// Finished back until the handshake timeout.
type finishedHold struct {
	front, up *net.UDPConn
	server    *net.UDPAddr
	mu        sync.Mutex
	client    net.Addr
	holding   bool
	held      [][]byte
}

func newFinishedHold(t *testing.T, server *net.UDPAddr) *finishedHold {
	p := &finishedHold{front: udpSocket(t), up: udpSocket(t), server: server, holding: true}
	t.Cleanup(func() { _ = p.front.Close(); _ = p.up.Close() })
	go p.clientToServer()
	go p.serverToClient()
	return p
}

func (p *finishedHold) Addr() *net.UDPAddr { return p.front.LocalAddr().(*net.UDPAddr) }

func (p *finishedHold) clientToServer() {
	buf := make([]byte, 9000)
	for {
		n, from, err := p.front.ReadFrom(buf)
		if err != nil {
			return
		}
		records, err := recordlayer.ContentAwareUnpackDatagram(buf[:n], dtls.CIDLength)
		if err != nil {
			continue
		}
		p.mu.Lock()
		p.client = from
		for _, r := range records {
			h := recordlayer.Header{ConnectionID: make([]byte, dtls.CIDLength)}
			if p.holding && h.Unmarshal(r) == nil && h.Epoch == 1 {
				p.held = append(p.held, append([]byte(nil), r...))
				continue
			}
			_, _ = p.up.WriteTo(r, p.server)
		}
		p.mu.Unlock()
	}
}

func (p *finishedHold) serverToClient() {
	buf := make([]byte, 9000)
	for {
		n, _, err := p.up.ReadFrom(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		client := p.client
		p.mu.Unlock()
		if client != nil {
			_, _ = p.front.WriteTo(buf[:n], client)
		}
	}
}

// release sends the held records on, and every later one at once.
func (p *finishedHold) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holding = false
	for _, r := range p.held {
		_, _ = p.up.WriteTo(r, p.server)
	}
}

// dialed is a handshake's outcome, from its goroutine.
type dialed struct {
	cc  *udpClient.Conn
	err error
}

// revokedClosesTheSession waits for the server to close dev's session as
// revoked, once, and for the client to see it end (when its handshake
// completed at all: the server finishes pion's handshake before it checks).
func revokedClosesTheSession(t *testing.T, f *fixture, d dialed) {
	t.Helper()
	revoked := f.metrics.SessionsClosed.WithLabelValues("revoked")
	testwait.ForState(t, "the server to close the session made during the key change (revoked)", func() (bool, string) {
		n, open := testutil.ToFloat64(revoked), testutil.ToFloat64(f.metrics.Sessions)
		return n >= 1 && open == 0, fmt.Sprintf("revoked %v, established %v", n, open)
	}, testwait.Within(10*time.Second))
	if got := testutil.ToFloat64(revoked); got != 1 {
		t.Errorf("sessions closed as revoked = %v, want 1", got)
	}
	if d.err != nil {
		return
	}
	select {
	case <-d.cc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the client's session is still open after the server closed it")
	}
}

// A key rotated while a handshake waited for the client's Finished (pion
// had looked the old key up at ClientKeyExchange) used to give the holder
// of the old key a session that nothing closed: the rotation's
// closeIdentity found no registered session, and when the Finished came
// the old key completed the handshake and isKnown held (the new key was
// cached). The session now notes the key cache's change mark when accepted
// and, once registered, closes itself when its identity changed since.
func TestKeyRotatedDuringAHandshakeClosesItsSession(t *testing.T) {
	var keys *dtls.KeyCache
	f := newFixture(t, func(c *dtls.Config) { keys = c.Keys })
	old, rotated := []byte("old-key-0123456789ab"), []byte("new-key-0123456789ab")
	f.provision(t, "dev-rotating", old)
	hold := newFinishedHold(t, f.srv.Addr())

	done := make(chan dialed, 1)
	go func() {
		cc, _, err := dialGoWithin(t, udpSocket(t), hold.Addr(), "dev-rotating", old, true, 15*time.Second)
		done <- dialed{cc, err}
	}()
	testwait.For(t, "the server to look the old key up (ClientKeyExchange)",
		func() bool { return keys.Known() == 1 }, testwait.Within(10*time.Second))

	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `update public.device_credentials set psk = $2 where devid = $1`, "dev-rotating", rotated); err != nil {
		t.Fatal(err)
	}
	if err := keys.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(f.metrics.KeyChanges.WithLabelValues("replaced")); got != 1 {
		t.Fatalf("key changes seen (replaced) = %v, want 1", got)
	}
	hold.release()
	revokedClosesTheSession(t, f, <-done)
}
