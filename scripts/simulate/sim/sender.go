package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"google.golang.org/protobuf/proto"
)

// dialer opens one device's connection. Every device has its own UDP socket,
// as a real fleet is many peers: servers keep per-peer state (go-coap's DTLS
// server, libcoap; coap-server's lean path a per-source share), and load from
// a single socket measures a situation no server sees (docs/pitfalls.md#go-coap).
type dialer func(ctx context.Context, dev *Device) (*udpClient.Conn, error)

func clientOptions(logger *slog.Logger) []udp.Option {
	return []udp.Option{
		// An uplink fits in one datagram; block-wise would only add state.
		options.WithBlockwise(false, 0, 0),
		options.WithErrors(func(err error) { logger.Debug("coap client", "err", err) }),
	}
}

func plainDialer(addr string, logger *slog.Logger) dialer {
	return func(_ context.Context, _ *Device) (*udpClient.Conn, error) {
		cc, err := udp.Dial(addr, clientOptions(logger)...)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		return cc, nil
	}
}

// dtlsDialer does a DTLS 1.2 PSK handshake per device, identity = device ID,
// offering a Connection ID (RFC 9146) as NB-IoT devices behind carrier NAT
// do. The handshake is run explicitly: go-coap's Dial does not report a
// wrong key (docs/pitfalls.md#pion-dtls), the first request would just fail.
// timeout bounds the handshake (pion retransmits flights within it, RFC 6347
// §4.2.4): a wrong key shows as a timeout, as the server drops the Finished
// it cannot verify.
func dtlsDialer(addr string, keys map[string][]byte, timeout time.Duration, logger *slog.Logger) dialer {
	return func(ctx context.Context, dev *Device) (*udpClient.Conn, error) {
		psk, ok := keys[dev.ID]
		if !ok {
			return nil, fmt.Errorf("dtls: no key for %s", dev.ID)
		}
		raddr, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("dtls: resolve %s: %w", addr, err)
		}
		pc, err := net.ListenUDP("udp", nil)
		if err != nil {
			return nil, fmt.Errorf("dtls: socket: %w", err)
		}
		dc, err := piondtls.ClientWithOptions(pc, raddr,
			piondtls.WithPSK(func([]byte) ([]byte, error) { return psk, nil }),
			piondtls.WithPSKIdentityHint([]byte(dev.ID)),
			piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8, piondtls.TLS_PSK_WITH_AES_128_GCM_SHA256),
			piondtls.WithConnectionIDGenerator(piondtls.OnlySendCIDGenerator()),
		)
		if err != nil {
			_ = pc.Close()
			return nil, fmt.Errorf("dtls: %s: %w", dev.ID, err)
		}
		hctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := dc.HandshakeContext(hctx); err != nil {
			_ = dc.Close()
			_ = pc.Close()
			return nil, fmt.Errorf("dtls: handshake as %s: %w", dev.ID, err)
		}
		return coapdtls.Client(dc, clientOptions(logger)...), nil
	}
}

// sender is one device's loop: it sends an uplink per tick, one at a time
// (NSTART = 1, RFC 7252 §4.7), and records every outcome.
type sender struct {
	dev     *Device
	dial    dialer
	cc      *udpClient.Conn
	non     bool
	timeout time.Duration
	stats   *Stats
	match   *matcher      // nil without a /ws subscriber
	budget  *atomic.Int64 // uplinks left for the whole run; nil = no count limit
	spent   func()        // called by the sender that sent the budget's last uplink
	logger  *slog.Logger
}

// run sends at start+offset, then every interval, until ctx ends or the
// budget is spent. A send in flight when ctx ends completes (within the
// request timeout) so that its answer is counted.
func (s *sender) run(ctx context.Context, offset, interval time.Duration) {
	first := time.NewTimer(offset)
	select {
	case <-ctx.Done():
		first.Stop()
		return
	case <-first.C:
	}
	// A Ticker drops ticks while a send is slower than the interval: the
	// device falls behind rather than bursting, and the printed rate shows it.
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		last := false
		if s.budget != nil {
			left := s.budget.Add(-1)
			if left < 0 {
				return
			}
			last = left == 0
		}
		s.sendOne(ctx)
		if last {
			s.spent() // the run's count is reached: nobody waits for a tick
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *sender) sendOne(ctx context.Context) {
	u := s.dev.Next()
	payload, err := proto.Marshal(u)
	if err != nil { // cannot happen for generated uplinks
		s.stats.errors.Add(1)
		return
	}
	if err := s.ensureConn(ctx); err != nil {
		s.stats.sent.Add(1)
		s.stats.errors.Add(1)
		s.logger.Debug("simulate: connect", "device", s.dev.ID, "err", err)
		return
	}
	start := time.Now()
	var e *expectation
	if s.match != nil {
		e = s.match.expect(u.GetDeviceId(), u.GetUplinkCount(), start)
	}
	s.stats.sent.Add(1)
	code, err := s.post(payload)
	rtt := time.Since(start)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			s.stats.timeouts.Add(1)
		} else {
			s.stats.errors.Add(1)
			s.logger.Debug("simulate: post", "device", s.dev.ID, "err", err)
		}
	} else {
		s.stats.answer(code, rtt)
	}
	if e != nil {
		s.match.done(e, err == nil && code == codes.Changed)
	}
}

// ensureConn (re)dials when the connection is gone: a real device reattaches
// after its socket failed (e.g. the server restarted and ICMP closed it).
func (s *sender) ensureConn(ctx context.Context) error {
	if s.cc != nil {
		select {
		case <-s.cc.Done():
			_ = s.cc.Close()
			s.cc = nil
		default:
			return nil
		}
	}
	cc, err := s.dial(ctx, s.dev)
	if err != nil {
		return err
	}
	s.cc = cc
	return nil
}

// post sends one uplink as CON (retransmitted by go-coap, RFC 7252 §4.2) or
// NON (§4.3), Content-Format 42, and waits for the answer.
func (s *sender) post(payload []byte) (codes.Code, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	req, err := s.cc.NewPostRequest(ctx, "/uplink", message.AppOctets, bytes.NewReader(payload))
	if err != nil {
		return 0, err
	}
	defer s.cc.ReleaseMessage(req)
	if s.non {
		req.SetType(message.NonConfirmable)
	}
	resp, err := s.cc.Do(req)
	if err != nil {
		return 0, err
	}
	code := resp.Code()
	s.cc.ReleaseMessage(resp)
	return code, nil
}

func (s *sender) close() {
	if s.cc != nil {
		_ = s.cc.Close()
	}
}
