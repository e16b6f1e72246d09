package ingest_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func u32(v uint32) *uint32   { return &v }
func f32(v float32) *float32 { return &v }

// benchUplinks are the two shapes that matter: the common heartbeat, and the
// largest uplink a device sends (first after boot, with a fix and a full scan).
func benchUplinks() map[string]*nbiotv1.Uplink {
	aps := make([]*nbiotv1.WifiAp, 10)
	for i := range aps {
		aps[i] = &nbiotv1.WifiAp{Bssid: []byte{0x00, 0x1a, 0x2b, 0x3c, 0x4d, byte(i)}, Rssi: int32(-50 - 4*i), Channel: uint32(1 + 5*(i%3))}
	}
	return map[string]*nbiotv1.Uplink{
		"heartbeat": {DeviceId: "SIM-0001", UplinkCount: 42, Temperature: f32(21.37),
			Activity: &nbiotv1.Activity{Sleep: 3520, Modem: 23, Other: 57}, BatteryMv: u32(3612)},
		"full": {DeviceId: "SIM-0001", UplinkCount: 1, Temperature: f32(21.37),
			Activity: &nbiotv1.Activity{Sleep: 3400, Modem: 38, Gnss: 87, Wifi: 6, Other: 19},
			Config: &nbiotv1.DeviceConfig{HeartbeatInterval: u32(3600), HwVersion: "nrf9160-r2", FwVersion: "1.4.3",
				GnssInterval: u32(21600), WifiScanInterval: u32(900)},
			Reboot:  &nbiotv1.Reboot{Reason: nbiotv1.Reboot_REASON_FIRMWARE_UPDATE, Count: 4},
			WifiAps: aps, Gnss: &nbiotv1.Gnss{Lat: 48.137154, Lon: 11.576124, AccuracyM: 7.5}, BatteryMv: u32(3612)},
	}
}

// BenchmarkDecodeAndEntry is the CPU an uplink costs coap-server besides
// the CoAP layer: protobuf decode, validation (ingest.Decode), live-log
// entry build and its JSON encoding — what the handler and the hub's
// Broadcast do per uplink.
//
//	go test -run '^$' -bench DecodeAndEntry -benchmem ./coap-server/ingest
func BenchmarkDecodeAndEntry(b *testing.B) {
	now := time.Date(2026, 11, 27, 13, 0, 0, 0, time.UTC)
	for _, name := range []string{"heartbeat", "full"} {
		payload, err := proto.Marshal(benchUplinks()[name])
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			var frameBytes int
			for b.Loop() {
				u := new(nbiotv1.Uplink)
				id, err := ingest.Decode(payload, "", u)
				if err != nil {
					b.Fatal(err)
				}
				frame, err := livelog.Uplink(id, now, u, nil).Marshal()
				if err != nil {
					b.Fatal(err)
				}
				frameBytes = len(frame)
			}
			b.ReportMetric(float64(frameBytes), "frame-bytes")
		})
	}
}
