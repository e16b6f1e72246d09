package app_test

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

// BenchmarkAccessChecksDuringFlood: other users' access checks per second
// (each an authorized /device-logs handshake whose check misses the cache
// and asks Supabase REST, 20 ms away) with no flood, during a flood of
// random device IDs from one user (64 clients), and during the same flood
// with the per-user and per-address quotas lifted (the relay before them).
//
//	go test -run '^$' -bench AccessChecksDuringFlood -benchtime 300x ./relay/app/
func BenchmarkAccessChecksDuringFlood(b *testing.B) {
	const users = 2000 // 10 uncached checks each before their own budget bites
	noCache := func(cfg *app.Config) { cfg.AccessCache.Allow = time.Nanosecond }
	lifted := map[string]string{
		"MAX_DEVICES_PER_USER": "1000000", "MAX_DEVICES_PER_IP": "1000000",
		"MAX_CONNECTIONS_PER_USER": "1000000", "MAX_CONNECTIONS_PER_IP": "1000000",
		"ACCESS_CHECKS_PER_MINUTE_PER_USER": "1000000", "ACCESS_CHECKS_PER_MINUTE_PER_IP": "1000000",
	}
	limited := newFloodEnv(b, 20*time.Millisecond, users, nil, noCache)
	open := newFloodEnv(b, 20*time.Millisecond, users, lifted, noCache)
	var next atomic.Int64
	run := func(b *testing.B, f *floodEnv, workers int) {
		toks := make([]string, users)
		for i := range toks {
			toks[i] = f.token(b, floodUser(i))
		}
		var stop func() (int64, int64)
		if workers > 0 {
			stop = f.flood(b, workers)
			start := f.backend.Load()
			testwait.For(b, "the flood reaching the backend", func() bool { return f.backend.Load() >= start+8 })
		}
		var failed atomic.Int64
		b.SetParallelism(8)
		b.ResetTimer()
		t0 := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := int(next.Add(1)) % users
				code, err := f.dial(toks[i], fmt.Sprintf("10.%d.%d.1", i/250, i%250), floodDev(i))
				if err != nil || code != http.StatusSwitchingProtocols {
					failed.Add(1)
				}
			}
		})
		elapsed := time.Since(t0)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "checks/s")
		b.ReportMetric(float64(failed.Load()), "failed")
		if stop != nil {
			sent, lim := stop()
			b.ReportMetric(float64(sent)/elapsed.Seconds(), "flood_req/s")
			b.ReportMetric(float64(lim), "flood_429")
		}
	}
	b.Run("quiet", func(b *testing.B) { run(b, limited, 0) })
	b.Run("flood", func(b *testing.B) { run(b, limited, 64) })
	b.Run("flood_quotas_lifted", func(b *testing.B) { run(b, open, 64) })
}
