package stream

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// BenchmarkLivePublish takes a LIVELOG publish apart: one message per
// entry from 16 concurrent callers on the embedded server, process CPU per
// message until the stream holds them all. "ack+id" is what Log does with
// NATS_URL (acknowledged, with a Nats-Msg-Id); "ack" drops the message ID
// (the Duplicates window's cost), close to what Log does embedded (its
// KeyHeader instead); "noreply" drops the acknowledgement (what is
// left is the stream's own work); "async+id" is nats.go's PublishMsgAsync
// with no bound on what is in flight (what a deeper pipeline would save);
// "ack+id/nolimit" lifts the per-device limit and "ack+id/bytes1M" is at
// the byte limit from the start (what retention costs).
//
//	go test -run '^$' -bench LivePublish -benchtime 160000x ./coap-server/stream
func BenchmarkLivePublish(b *testing.B) {
	entry := []byte(`{"deviceId":"BENCH","timestamp":"2024-01-15T10:30:00.000Z","type":"uplink","message":"Received uplink #42","data":{"uplink_count":42,"temperature":23.5,"activity":{"sleep":3600,"modem":45,"gnss":120,"wifi":30,"other":60},"wifi_count":3,"reboot":null}}`)
	for _, mode := range []string{"ack+id", "ack", "noreply", "async+id", "ack+id/nolimit", "ack+id/bytes1M"} {
		b.Run(mode, func(b *testing.B) {
			cfg := Config{}
			switch mode {
			case "ack+id/nolimit":
				cfg.LivePerDevice = 1 << 40
			case "ack+id/bytes1M":
				cfg.LivePerDevice, cfg.LiveBytes = 1<<40, 1<<20
			}
			e := openEmbedded(b, cfg)
			ctx := context.Background()
			const workers = 16
			per := (b.N + workers - 1) / workers
			var wg sync.WaitGroup
			b.ResetTimer()
			cpu0, t0 := cpuTime(b), time.Now()
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					dev := fmt.Sprintf("D%d", w)
					for i := range per {
						switch mode {
						case "ack+id", "ack+id/nolimit", "ack+id/bytes1M":
							if _, _, err := e.LogJSON(ctx, dev, entry, fmt.Sprintf("%02d%030d", w, i)); err != nil {
								b.Error(err)
								return
							}
						case "ack":
							if _, _, err := e.LogJSON(ctx, dev, entry, ""); err != nil {
								b.Error(err)
								return
							}
						case "async+id":
							m := &nats.Msg{Subject: liveSubject + dev, Data: entry}
							{
								m.Header = nats.Header{"Nats-Msg-Id": []string{fmt.Sprintf("l%02d%030d", w, i)}}
							}
							if _, err := e.js.PublishMsgAsync(m); err != nil {
								b.Error(err)
								return
							}
						default:
							if err := e.nc.PublishMsg(&nats.Msg{Subject: liveSubject + dev, Data: entry}); err != nil {
								b.Error(err)
								return
							}
						}
					}
				}()
			}
			wg.Wait()
			<-e.js.PublishAsyncComplete()
			// The stream may still be storing what was published without
			// waiting: poll its last sequence (the per-device limit drops
			// the oldest entries, so not its count).
			deadline := time.Now().Add(30 * time.Second)
			for {
				info, err := e.live.Info(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if info.State.LastSeq >= uint64(per*workers) {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("the stream holds %d of %d", info.State.LastSeq, per*workers)
				}
				time.Sleep(time.Millisecond)
			}
			el, cpu := time.Since(t0), cpuTime(b)-cpu0
			n := per * workers
			b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(n), "cpu-µs/msg")
			b.ReportMetric(float64(n)/el.Seconds(), "msg/s")
			if e.groups != nil && e.groups.sent > 0 {
				b.ReportMetric(float64(e.groups.entries)/float64(e.groups.sent), "entries/group")
			}
		})
	}
}

// BenchmarkLiveAtCap is what an entry costs once the devices are at their
// per-device limit (LIVELOG_PER_DEVICE, here 4), so that every entry
// removes that device's oldest: acknowledged LIVELOG publishes from 16
// callers, round-robin over the devices, process CPU per entry. The
// removal makes nats-server look for the device's next entry in the
// block from the removed one on, past every other device's entries in
// between, so the cost grows with the number of devices interleaved, not
// with the limit. "nolimit" is the same publishes with no per-device limit,
// "bytes" with the stream at a byte limit instead (4 MiB, about 16 entries
// a device: every entry removes the stream's oldest).
//
//	go test -run '^$' -bench LiveAtCap -benchtime 40000x ./coap-server/stream
func BenchmarkLiveAtCap(b *testing.B) {
	entry := []byte(`{"deviceId":"BENCH","timestamp":"2024-01-15T10:30:00.000Z","type":"uplink","message":"Received uplink #42","data":{"uplink_count":42,"temperature":23.5,"activity":{"sleep":3600,"modem":45,"gnss":120,"wifi":30,"other":60},"wifi_count":3,"reboot":null}}`)
	const perDevice, workers = 4, 16
	for _, c := range []struct {
		devices int
		limit   string
	}{{16, ""}, {1000, ""}, {5000, ""}, {5000, "nolimit"}, {1000, "bytes"}} {
		name := fmt.Sprintf("devices=%d", c.devices)
		if c.limit != "" {
			name += "/" + c.limit
		}
		b.Run(name, func(b *testing.B) {
			cfg := Config{LivePerDevice: perDevice}
			switch c.limit {
			case "nolimit":
				cfg.LivePerDevice = 1 << 40
			case "bytes":
				cfg.LivePerDevice, cfg.LiveBytes = 1<<40, 4<<20
			}
			e := openEmbedded(b, cfg)
			devs := make([]string, c.devices)
			for i := range devs {
				devs[i] = fmt.Sprintf("D%05d", i)
			}
			publish := func(n int) int {
				var wg sync.WaitGroup
				per := (n + workers - 1) / workers
				for w := range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range per {
							dev := devs[(i*workers+w)%len(devs)]
							if _, _, err := e.LogJSON(context.Background(), dev, entry, ""); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				return per * workers
			}
			if c.limit == "bytes" {
				publish(2 * int(cfg.LiveBytes) / len(entry)) // the stream at its limit
			} else {
				publish(c.devices * perDevice) // every device at its limit
			}
			b.ResetTimer()
			cpu0 := cpuTime(b)
			n := publish(b.N)
			cpu := cpuTime(b) - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(n), "cpu-µs/entry")
		})
	}
}
