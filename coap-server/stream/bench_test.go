package stream

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

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
// datagram path: the UPLINKS publish and the LIVELOG publish, each waited
// for, from 16 concurrent devices (CoAP handlers run per peer), on the
// embedded server. It reports the CPU of the whole process (client and
// server side of NATS) per uplink and the latency of the pair, by fsync
// policy: sync=default (the OS has every write at once, fsync every 2 min;
// survives kill -9) and sync=always (fsync per message; survives a power cut).
//
//	go test -run '^$' -bench DurableUplink -benchtime 20000x ./coap-server/stream
func BenchmarkDurableUplink(b *testing.B) {
	for _, always := range []bool{false, true} {
		name := "sync=default"
		if always {
			name = "sync=always"
		}
		b.Run(name, func(b *testing.B) {
			e := openEmbedded(b, Config{Storage: true, SyncAlways: always})
			ctx := context.Background()
			a, payload := accepted(b, "BENCH", 1)
			entry := livelog.Uplink("BENCH", time.Now(), a.Uplink, nil)
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
						id := MsgID("BENCH", int32(w*per+i), nil, payload)
						start := time.Now()
						if _, err := e.PublishUplink(ctx, a, payload, id); err != nil {
							b.Error(err)
							return
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
			_ = fmt.Sprint()
		})
	}
}

// BenchmarkUplinksPerMessage is what the 10 µs goal would take: the same
// acknowledged LIVELOG publishes from 16 concurrent publishers, with k
// live-log entries packed into each JetStream message instead of one. It
// reports process CPU per entry. The design keeps one entry per message
// (per-device subjects serve tail, since and the per-device retention, and
// the stream's Nats-Msg-Id dedups each uplink), so this is a measurement of
// the alternative, not of code the server runs (README, Durability).
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
			data := slices.Repeat(one, k)
			const workers = 16
			msgs := (b.N/k + workers - 1) / workers
			var wg sync.WaitGroup
			b.ResetTimer()
			cpu0 := cpuTime(b)
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
			cpu := cpuTime(b) - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/float64(workers*msgs*k), "cpu-µs/entry")
		})
	}
}
