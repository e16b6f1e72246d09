package ingest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	coapNet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// BenchmarkPeerHistory is the round trip of one uplink from a peer that
// already has history answers remembered, through the lean path and
// through go-coap v3.8.0's UDP server (the path before the lean one),
// with an in-memory stream. The lean path's cost does not move with the
// history; go-coap's grows with it, because it walks the peer's 247 s
// response cache on every datagram. go-coap is not filled to 60,000: the
// filling itself would walk ~60,000²/2 entries (minutes).
//
//	go test -run '^$' -bench PeerHistory -benchtime 2000x ./coap-server/ingest
func BenchmarkPeerHistory(b *testing.B) {
	for _, srv := range []string{"lean", "go-coap"} {
		for _, history := range []int{10, 10_000, 60_000} {
			if srv == "go-coap" && history > 10_000 {
				continue
			}
			b.Run(fmt.Sprintf("%s/history=%d", srv, history), func(b *testing.B) {
				h := testHandler(nil)
				addr := benchServer(b, srv, h)
				cc, err := udp.Dial(addr)
				if err != nil {
					b.Fatal(err)
				}
				defer cc.Close()
				count := uint32(0)
				post := func() {
					count++
					payload, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "BENCH-1", UplinkCount: count})
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(payload))
					if err != nil {
						b.Fatal(err)
					}
					if resp.Code() != codes.Changed {
						b.Fatalf("code %v", resp.Code())
					}
				}
				fill(b, srv, h, history, post)
				b.ResetTimer()
				for b.Loop() {
					post()
				}
			})
		}
	}
}

// fill gives the peer history remembered answers: in Dedup for the lean
// path (what its datagrams leave behind), through real requests for
// go-coap (its cache is out of reach).
func fill(b *testing.B, srv string, h *Handler, history int, post func()) {
	b.Helper()
	if srv == "go-coap" {
		for range history {
			post()
		}
		return
	}
	now := time.Now()
	for i := range history {
		k := h.Dedup.key("BENCH-1", int32(i), []byte{byte(i)}, []byte{byte(i), byte(i >> 8)})
		h.Dedup.remember(k, codes.Changed, nil, uint64(i), now)
	}
}

func benchServer(b *testing.B, srv string, h *Handler) string {
	b.Helper()
	if srv == "go-coap" {
		ln, err := coapNet.NewListenUDP("udp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		s := NewUDPServer(h, h.Logger)
		go func() { _ = s.Serve(ln) }()
		b.Cleanup(s.Stop)
		return ln.LocalAddr().String()
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	s, err := NewLeanServer(h, conn, LeanConfig{Metrics: NewLeanMetrics(prometheus.NewRegistry())})
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	b.Cleanup(s.Stop)
	return s.Addr().String()
}
