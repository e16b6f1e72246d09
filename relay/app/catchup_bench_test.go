package app_test

import (
	"testing"
	"time"
)

// BenchmarkCatchUp measures a browser's start with tail=1000 on a device
// with 1,000 retained entries (one op = dial, read the 1,000, close):
// served from the relay's history (RELAY_HISTORY=1000, the shared link
// already open) or by a dedicated upstream, i.e. coap-server reading its
// stream (RELAY_HISTORY=100 cannot answer it).
//
//	go test -run '^$' -bench CatchUp -benchtime 20x ./relay/app
func BenchmarkCatchUp(b *testing.B) {
	const entries = 1000
	c := startCoAP(b, "", "")
	cc := dialCoAP(b, c)
	for i := range entries {
		sendUplink(b, cc, "CATCH", uint32(i))
	}
	for _, bc := range []struct {
		name    string
		history string
	}{{"ring", "1000"}, {"dedicated", "100"}} {
		b.Run(bc.name, func(b *testing.B) {
			r := startRelay(b, c, map[string]string{"AUTH_DISABLED": "true", "RELAY_HISTORY": bc.history, "RELAY_HISTORY_BYTES": "4194304"}, nil)
			holder := mustDialFrom(b, r, "CATCH", "tail=1000") // opens the shared link and fills its ring
			readEntries(b, holder, entries)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				ws := mustDialFrom(b, r, "CATCH", "tail=1000")
				readEntries(b, ws, entries)
				_ = ws.Close()
			}
			b.ReportMetric(float64(b.N*entries)/time.Since(start).Seconds(), "entries/s")
			b.StopTimer()
			served := "ring"
			if bc.name == "dedicated" {
				served = "dedicated"
			}
			if n := counter(b, r.Metrics, "nbiot_relay_history_starts_total", "served", served); n < float64(b.N) {
				b.Fatalf("starts{%s} %v, want %d", served, n, b.N)
			}
		})
	}
}
