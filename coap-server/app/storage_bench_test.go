package app_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// BenchmarkCoAPWhileStoring: 16 devices (one socket each) post typical
// uplinks back to back to a coap-server storing into local Postgres. It
// reports the CoAP rate and RTT percentiles while storing, and the rate at
// which the uplinks were stored (until the last one is in the database).
// The storage=none case is the baseline: the same traffic, live logs only.
func BenchmarkCoAPWhileStoring(b *testing.B) {
	b.Run("storage=postgres", func(b *testing.B) { benchCoAP(b, true) })
	b.Run("storage=none", func(b *testing.B) { benchCoAP(b, false) })
}

func benchCoAP(b *testing.B, store bool) {
	db := ""
	if store {
		db = pgtest.NewDB(b)
	}
	a := startApp(b, func(c *app.Config) { c.DatabaseURL = db })
	const clients = 16
	conns := make([]*udpClient.Conn, clients)
	payloads := make([][][]byte, clients)
	per := (b.N + clients - 1) / clients
	for i := range conns {
		conns[i] = dialCoAP(b, a)
		dev := fmt.Sprintf("BENCH%02d", i)
		for n := range per {
			p, _ := proto.Marshal(storagetest.TypicalUplink(dev, uint32(n)))
			payloads[i] = append(payloads[i], p)
		}
	}
	rtts := make([][]time.Duration, clients)
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i, cc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range payloads[i] {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				t0 := time.Now()
				resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(p))
				cancel()
				if err != nil || resp.Code() != codes.Changed {
					errs <- fmt.Errorf("post: %v %v", err, resp)
					return
				}
				rtts[i] = append(rtts[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	coapDone := time.Since(start)
	total := clients * per
	if store {
		testwait.ForState(b, "all stored", func() (bool, string) {
			n := countRows(b, db, `select count(*) from activity`)
			return n == total, fmt.Sprint(n, " of ", total)
		}, testwait.Within(5*time.Minute))
		b.ReportMetric(float64(total)/time.Since(start).Seconds(), "stored_uplinks/s")
	}
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	var all []time.Duration
	for _, r := range rtts {
		all = append(all, r...)
	}
	b.ReportMetric(float64(total)/coapDone.Seconds(), "coap_uplinks/s")
	b.ReportMetric(float64(pct(all, 50).Microseconds()), "p50_µs")
	b.ReportMetric(float64(pct(all, 99).Microseconds()), "p99_µs")
}
