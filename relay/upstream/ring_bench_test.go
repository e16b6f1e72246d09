package upstream

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/gorilla/websocket"
)

// uplinkJSON is a realistic uplink entry (3 wifi APs, a reboot): 440 bytes.
func uplinkJSON(seq uint64) []byte {
	return fmt.Appendf(nil, `{"seq":%d,"deviceId":"SIM-0001","timestamp":"2026-12-01T12:00:00.000Z","type":"uplink","message":"Received uplink #%d",`+
		`"data":{"uplink_count":%d,"temperature":23.5,"activity":{"sleep":3600,"modem":45,"gnss":120,"wifi":30,"other":60},"wifi_count":3,`+
		`"reboot":{"reason":"watchdog","count":3},"battery_mv":3600,"config_applied":true,"gnss":{"lat":48.85661,"lon":2.35222,"accuracy_m":12}}}`, seq, seq, seq)
}

// BenchmarkRingMemory reports the heap held by one full ring of
// DefaultHistory realistic entries. A prepared message encodes its server
// frame at once (and keeps only that), which is what the relay, a server
// to browsers, writes: no further copy is cached.
func BenchmarkRingMemory(b *testing.B) {
	const rings = 200
	var entryBytes int
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		kept := make([]ring, rings)
		for i := range kept {
			kept[i] = newRing(DefaultHistory, DefaultHistoryBytes)
			for s := uint64(1); s <= DefaultHistory; s++ {
				j := uplinkJSON(s)
				entryBytes = len(j)
				pm, _ := websocket.NewPreparedMessage(websocket.TextMessage, j)
				kept[i].push(s, newFrame(pm, len(j)))
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/rings, "B/ring")
		runtime.KeepAlive(kept)
	}
	b.ReportMetric(float64(entryBytes), "B/entry-json")
}
