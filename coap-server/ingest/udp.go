package ingest

import (
	"log/slog"
	"time"

	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	udpServer "github.com/plgd-dev/go-coap/v3/udp/server"
)

// This file is go-coap's UDP server as plain CoAP ran on it before the
// lean path (lean.go): tests and benchmarks still compare the two
// (BenchmarkPeerHistory). coap-server serves plain CoAP with LeanServer,
// and CoAPS sets its own options in coap-server/dtls/server.go.

// PeerIdleTimeout is how long go-coap keeps a silent peer's state. It must
// outlast MAX_TRANSMIT_SPAN (45 s, RFC 7252 §4.8.2): go-coap's duplicate
// detection (§4.5) lives in that state, and the default 16 s would forget a
// CON before its last retransmission arrives, turning it into a second
// uplink. Storage is idempotent on its own (uplink_id), but the live log and
// the answer should not repeat either.
const PeerIdleTimeout = 60 * time.Second

// peerQueueSize is go-coap's per-peer receive queue. One device has at most
// one exchange in flight (NSTART = 1, §4.7) so the default of 16 is plenty;
// it is set explicitly because a full queue blocks the socket's single read
// loop for every device (docs/pitfalls.md#go-coap).
const peerQueueSize = 16

// UDPOptions are the go-coap UDP server options of NewUDPServer: the handler, errors into slog, the peer idle
// timeout and block-wise transfers off (an uplink fits in one datagram, and
// block-wise would let a peer make us buffer its payload).
func UDPOptions(h mux.Handler, logger *slog.Logger) []udpServer.Option {
	return []udpServer.Option{
		options.WithMux(h),
		options.WithErrors(func(err error) { logger.Debug("coap", "err", err) }),
		options.WithInactivityMonitor(PeerIdleTimeout, func(cc *udpClient.Conn) { _ = cc.Close() }),
		options.WithReceivedMessageQueueSize(peerQueueSize),
		options.WithBlockwise(false, 0, 0),
	}
}

// NewUDPServer returns go-coap's plain CoAP server for h (tests and
// benchmarks; coap-server uses LeanServer).
func NewUDPServer(h mux.Handler, logger *slog.Logger) *udpServer.Server {
	return udp.NewServer(UDPOptions(h, logger)...)
}
