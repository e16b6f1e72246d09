package storagetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// TypicalUplink is what a device sends most often: counter, temperature,
// activity, battery and a three-AP wifi scan (activity + 3 sensor rows).
func TypicalUplink(devid string, n uint32) *nbiotv1.Uplink {
	return &nbiotv1.Uplink{
		DeviceId: devid, UplinkCount: n, Temperature: ptr(float32(n%40) + 0.5),
		Activity:  &nbiotv1.Activity{Sleep: 3500, Modem: 40, Gnss: 0, Wifi: 3, Other: 57},
		BatteryMv: ptr(uint32(3600 - n%500)),
		WifiAps: []*nbiotv1.WifiAp{
			{Bssid: []byte{0xaa, 0xbb, 0xcc, 0, 0, byte(n)}, Rssi: -60, Channel: 1},
			{Bssid: []byte{0xaa, 0xbb, 0xcc, 0, 1, byte(n)}, Rssi: -70, Channel: 6},
			{Bssid: []byte{0xaa, 0xbb, 0xcc, 0, 2, byte(n)}, Rssi: -80, Channel: 11},
		},
	}
}

// Bench measures sustained storage through the real pipeline: b.N typical
// uplinks from 1,000 devices are published to an embedded UPLINKS stream
// first (a backlog, as after a database outage), then the clock runs
// until the consumer has stored them all. It reports uplinks/s and rows/s
// (the catch-up rate), and checks every uplink was stored.
func Bench(b *testing.B, newWriter NewWriter, o storage.Options) {
	dbURL := pgtest.NewDB(b)
	w := newWriter(b, dbURL)
	db := Connect(b, dbURL)
	gate := &blocking{Writer: w, after: 0, blocked: make(chan struct{}), release: make(chan struct{})}
	p := NewPipeline(b, gate, o)
	start := time.Now().Add(-time.Hour)
	for i := range b.N {
		dev := fmt.Sprintf("BENCH%04d", i%1000)
		p.Publish(uplink.Accepted{ID: uuid.New(), DeviceID: dev, ReceivedAt: start.Add(time.Duration(i) * time.Microsecond),
			Uplink: TypicalUplink(dev, uint32(i/1000))})
	}
	b.ResetTimer()
	t0 := time.Now()
	close(gate.release)
	p.WaitSettled(b.N)
	elapsed := time.Since(t0)
	b.StopTimer()
	rows := testutil.ToFloat64(p.Consumer.Metrics().Rows)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "uplinks/s")
	b.ReportMetric(rows/elapsed.Seconds(), "rows/s")
	if n := db.Int(`select count(*) from activity`); n != b.N {
		b.Fatalf("stored %d of %d uplinks", n, b.N)
	}
}
