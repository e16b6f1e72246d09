package stream

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// cpuTime is the process's user+system CPU time so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDurableUplink is what durability adds to one uplink on the
// datagram path, as the handler does it: the UPLINKS publish (in a batch
// with the other devices' uplinks: batch.go), waited for, then the LIVELOG
// entry logged behind the answer (LogBehind), from 16 concurrent devices
// (the lean path's workers answer uplinks concurrently), on the embedded
// server. It reports the CPU of the whole process (client and server side
// of NATS) per uplink, until every entry is stored too, and the latency
// of what the answer waits for, by fsync policy: sync=default (the OS has
// every write at once, fsync every 2 min; survives kill -9) and
// sync=always (fsync per message; survives a power cut).
// "sync=default/entry-waited" waits for the entry too, as the handler did
// before LogBehind.
//
//	go test -run '^$' -bench DurableUplink -benchtime 20000x ./coap-server/stream
//
// "storage=none" is the same without storage (no UPLINKS publish: the live
// log only, each entry waited for, since it is what makes the uplink
// durable); the difference to sync=default is what making the uplink
// itself durable costs, the entry's CPU counted in both.
func BenchmarkDurableUplink(b *testing.B) {
	for _, c := range []struct {
		name            string
		storage, always bool
	}{{"sync=default", true, false}, {"sync=default/entry-waited", true, false}, {"sync=always", true, true}, {"storage=none", false, false}} {
		b.Run(c.name, func(b *testing.B) {
			// EntriesFollow as coap-server runs it: the ledger owes each
			// uplink's entry until it is resolved (ledger.go).
			e := openEmbedded(b, Config{Storage: c.storage, SyncAlways: c.always, EntriesFollow: c.storage && c.name != "sync=default/entry-waited"})
			ctx := context.Background()
			a0, payload := accepted(b, "BENCH", 1)
			entry := livelog.Uplink("BENCH", time.Now(), a0.Uplink, nil)
			const workers = 16
			lat := make([][]time.Duration, workers)
			var wg sync.WaitGroup
			per := (b.N + workers - 1) / workers
			b.ResetTimer()
			cpu0, t0 := cpuTime(b), time.Now()
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range per {
						a := a0
						a.Key = MsgKey("BENCH", int32(w*per+i), nil, payload)
						id := IDOf(a.Key)
						start := time.Now()
						if err := e.PublishUplink(ctx, a, payload); err != nil {
							b.Error(err)
							return
						}
						if e.Behind() && c.name != "sync=default/entry-waited" {
							lat[w] = append(lat[w], time.Since(start))
							if err := e.LogBehind(entry, id, nil); err != nil {
								b.Error(err)
								return
							}
							continue
						}
						if _, _, err := e.Log(ctx, entry, id); err != nil {
							b.Error(err)
							return
						}
						lat[w] = append(lat[w], time.Since(start))
					}
				}()
			}
			wg.Wait()
			if !e.FlushLive(30 * time.Second) {
				b.Fatal("entries still waiting after 30 s")
			}
			if n := e.AsyncErrors(); n != 0 {
				b.Fatalf("%d entries failed", n)
			}
			if l := e.ledger; l != nil {
				l.mu.Lock()
				owed := len(l.owed)
				l.mu.Unlock()
				if owed != 0 {
					b.Fatalf("the ledger still owes %d entries", owed)
				}
			}
			elapsed, cpu := time.Since(t0), cpuTime(b)-cpu0
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			n := len(all)
			if n == 0 {
				b.Fatal("nothing published")
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/uplink")
			b.ReportMetric(float64(all[n/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(all[n*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(n)/elapsed.Seconds(), "uplinks/s")
			if e.Behind() {
				// How often an answer waited for its entry (maxBehindBytes).
				b.ReportMetric(float64(e.BehindWaits())/float64(n), "waited/uplink")
			}
		})
	}
}

// BenchmarkUplinksPerMessage is what the 10 µs goal would take: the same
// acknowledged LIVELOG publishes from 16 concurrent publishers, with k
// live-log entries packed into each JetStream message instead of one. It
// reports process CPU per entry. UPLINKS is batched so (batch.go); the live
// log keeps one entry per message (per-device subjects serve tail, since
// and the per-device retention, and its key dedups each uplink),
// so for LIVELOG this is a measurement of the alternative, not of code the
// server runs (README, Durability).
//
//	go test -run '^$' -bench UplinksPerMessage -benchtime 40000x ./coap-server/stream
func BenchmarkUplinksPerMessage(b *testing.B) {
	a, _ := accepted(b, "BENCH", 1)
	one, err := livelog.Uplink("BENCH", time.Now(), a.Uplink, nil).Marshal()
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []int{1, 4, 16, 64} {
		b.Run(fmt.Sprintf("k=%d", k), func(b *testing.B) {
			e := openEmbedded(b, Config{})
			b.ResetTimer()
			cpu0 := cpuTime(b)
			n := logParallel(b, e, slices.Repeat(one, k), b.N/k)
			cpu := cpuTime(b) - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/float64(n*k), "cpu-µs/entry")
		})
	}
}

// BenchmarkFeed is what the live-log feed costs: the same acknowledged
// LIVELOG publishes from 16 publishers, without and with an instance's
// ordered consumer delivering every entry (to a FeedFunc that drops it).
// The hub holds the feed only while /ws has subscribers (hub.Feeder).
//
//	go test -run '^$' -bench Feed -benchtime 40000x ./coap-server/stream
func BenchmarkFeed(b *testing.B) {
	a, _ := accepted(b, "BENCH", 1)
	one, err := livelog.Uplink("BENCH", time.Now(), a.Uplink, nil).Marshal()
	if err != nil {
		b.Fatal(err)
	}
	for _, feed := range []bool{false, true} {
		b.Run(fmt.Sprint("feed=", feed), func(b *testing.B) {
			e := openEmbedded(b, Config{})
			if feed {
				stop, _, err := e.Feed(context.Background(), func(uint64, string, []byte) {})
				if err != nil {
					b.Fatal(err)
				}
				defer stop()
			}
			b.ResetTimer()
			cpu0 := cpuTime(b)
			n := logParallel(b, e, one, b.N)
			cpu := cpuTime(b) - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/entry")
		})
	}
}

// logParallel publishes about n acknowledged LIVELOG messages of data from
// 16 publishers, each with its own message ID, and returns how many.
func logParallel(b *testing.B, e *Engine, data []byte, n int) int {
	const workers = 16
	msgs := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range msgs {
				if _, _, err := e.LogJSON(context.Background(), "BENCH", data, MsgID("BENCH", int32(w*msgs+i), nil, data)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return workers * msgs
}

// BenchmarkUplinkSource is the stream side of storage: b.N uplinks
// published by 16 devices in parallel (so batched as on the datagram path)
// are fetched 500 at a time and acknowledged, as the storage workers do,
// with no database. It reports the process CPU per uplink of fetching and
// acknowledging (deleting) them, the rest of what durability costs.
//
//	go test -run '^$' -bench UplinkSource -benchtime 80000x ./coap-server/stream
func BenchmarkUplinkSource(b *testing.B) {
	e := openEmbedded(b, Config{Storage: true})
	ctx := context.Background()
	a, payload := accepted(b, "BENCH", 1)
	const workers = 16
	per := (b.N + workers - 1) / workers
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				if err := e.PublishUplink(ctx, a, payload); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	info, err := e.uplinks.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	src, err := e.UplinkSource(ctx, prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for got := 0; got < workers*per; {
		ds, err := src.Fetch(ctx, 500, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if len(ds) == 0 {
			b.Fatalf("fetched %d of %d", got, workers*per)
		}
		for _, d := range ds {
			if err := d.Ack(); err != nil {
				b.Fatal(err)
			}
		}
		got += len(ds)
	}
	cpu := cpuTime(b) - cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(workers*per), "cpu-µs/uplink")
	b.ReportMetric(float64(workers*per)/float64(info.State.Msgs), "uplinks/message")
}
