package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/natstest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// A deploy with a smaller UPLINKS_MAX_BYTES while UPLINKS holds accepted
// uplinks (answered 2.04) the database has not stored yet: nats-server
// (Debian's 2.9.10 as much as the embedded one) enforces a lowered limit
// on update by deleting the oldest messages, DiscardNew or not; the old
// ensure lost 1,950 of 3,000 here. Nothing may go, and the configured
// limit applies once the stream has drained.
func TestLowerUplinksMaxBytesKeepsAcceptedUplinks(t *testing.T) {
	for _, mode := range []string{"NATS_URL", "embedded"} {
		t.Run(mode, func(t *testing.T) {
			url := ""
			if mode == "NATS_URL" {
				url = natstest.Start(t).URL
			}
			ctx := context.Background()
			dir := t.TempDir()
			open := func(limit int64) *Engine {
				t.Helper()
				e, err := Open(ctx, Config{URL: url, DataDir: dir, Storage: true, UplinksBytes: limit})
				if err != nil {
					t.Fatal(err)
				}
				return e
			}
			e := open(8 << 20)
			for i := range 3000 {
				a, payload := largeUplink(t, fmt.Sprintf("D%d", i%10), uint32(i))
				if err := e.PublishUplink(ctx, a, payload); err != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
			}
			before := uplinksInfo(t, e)
			e.Close()

			// The database is down, the disk fills: the operator lowers the bound.
			e = open(1 << 20)
			after := uplinksInfo(t, e)
			t.Logf("3000 accepted: %d messages, %d bytes; after a start with UPLINKS_MAX_BYTES=1MiB: %d messages, limit %d bytes",
				before.State.Msgs, before.State.Bytes, after.State.Msgs, after.Config.MaxBytes)
			if after.State.Msgs != before.State.Msgs || after.State.FirstSeq != before.State.FirstSeq {
				t.Fatalf("UPLINKS lost %d of %d messages of accepted uplinks on a configuration update",
					before.State.Msgs-after.State.Msgs, before.State.Msgs)
			}
			if lim := after.Config.MaxBytes; lim < int64(after.State.Bytes) || lim > 8<<20 {
				t.Fatalf("limit %d: want between what it holds (%d) and the old limit", lim, after.State.Bytes)
			}
			if !e.clamped.Load() {
				t.Fatal("the engine does not know it kept a larger limit")
			}
			// Uplinks still come in, within the limit kept.
			a, payload := accepted(t, "NEW", 1)
			if err := e.PublishUplink(ctx, a, payload); err != nil {
				t.Fatalf("publish after the restart: %v", err)
			}

			// The database is back and drains the stream; the watcher
			// then lowers the limit (here, for the test, at once).
			src, err := e.UplinkSource(ctx, prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
			if err != nil {
				t.Fatal(err)
			}
			drained := 0
			for deadline := time.Now().Add(30 * time.Second); drained < 3001; {
				if time.Now().After(deadline) {
					t.Fatalf("drained %d of 3001", drained)
				}
				ds, err := src.Fetch(ctx, 500, 100*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range ds {
					if d.Accepted.DeviceID == "" {
						t.Fatal("an uplink came back empty")
					}
					if err := d.Ack(); err != nil {
						t.Fatal(err)
					}
				}
				drained += len(ds)
			}
			waitEmpty(t, e)
			if _, err := e.ensureStream(ctx, e.cfg.uplinksConfig(), e.keepUplinks); err != nil {
				t.Fatal(err)
			}
			if got := uplinksInfo(t, e).Config.MaxBytes; got != 1<<20 || e.clamped.Load() {
				t.Fatalf("drained: limit %d (clamped %v), want UPLINKS_MAX_BYTES", got, e.clamped.Load())
			}
			e.Close()
			e = open(1 << 20) // and a start after that changes nothing
			defer e.Close()
			if got := uplinksInfo(t, e).Config.MaxBytes; got != 1<<20 || e.clamped.Load() {
				t.Fatalf("restarted: limit %d (clamped %v), want UPLINKS_MAX_BYTES", got, e.clamped.Load())
			}
		})
	}
}

// largeUplink is an accepted uplink of about 1 KB (60 Wi-Fi access points).
func largeUplink(t *testing.T, device string, count uint32) (uplink.Accepted, []byte) {
	a, _ := accepted(t, device, count)
	for i := range 60 {
		a.Uplink.WifiAps = append(a.Uplink.WifiAps, &nbiotv1.WifiAp{Bssid: []byte{1, 2, 3, 4, 5, byte(i)}, Rssi: -60, Channel: 6})
	}
	b, err := proto.Marshal(a.Uplink)
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

func uplinksInfo(t *testing.T, e *Engine) *jetstream.StreamInfo {
	t.Helper()
	s, err := e.js.Stream(context.Background(), UplinksStream)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo()
}

// A raised limit applies at once, whatever the stream holds.
func TestRaiseUplinksMaxBytes(t *testing.T) {
	dir := t.TempDir()
	e := openEmbedded(t, Config{DataDir: dir, Storage: true, UplinksBytes: 2 << 20})
	ctx := context.Background()
	for i := range 100 {
		a, payload := accepted(t, "R", uint32(i))
		if err := e.PublishUplink(ctx, a, payload); err != nil {
			t.Fatal(err)
		}
	}
	e.Close()
	e = openEmbedded(t, Config{DataDir: dir, Storage: true, UplinksBytes: 64 << 20})
	if info := uplinksInfo(t, e); info.Config.MaxBytes != 64<<20 || info.State.Msgs == 0 || e.clamped.Load() {
		t.Fatalf("limit %d, %d messages: want 64 MiB and the uplinks kept", info.Config.MaxBytes, info.State.Msgs)
	}
}

// safeConfig never lowers replicas, and on UPLINKS tightens no limit that
// would delete accepted uplinks; on LIVELOG a lowered limit is retention
// and applies.
func TestSafeConfigDeletesNoAcceptedUplink(t *testing.T) {
	e := &Engine{cfg: Config{UplinksBytes: 1 << 20}.withDefaults()}
	info := &jetstream.StreamInfo{
		Config: jetstream.StreamConfig{Replicas: 3, MaxBytes: 64 << 20, MaxAge: time.Hour, MaxMsgs: 1000, MaxMsgsPerSubject: 10},
		State:  jetstream.StreamState{Msgs: 500, Bytes: 10 << 20},
	}
	up := e.cfg.uplinksConfig()
	up.MaxAge, up.MaxMsgs, up.MaxMsgsPerSubject = time.Minute, 10, 1 // tighter than the stream's
	got := e.safeConfig(info, up, e.keepUplinks)
	if got.Replicas != 3 || got.MaxAge != time.Hour || got.MaxMsgs != 1000 || got.MaxMsgsPerSubject != 10 {
		t.Errorf("UPLINKS: replicas %d, max age %v, max msgs %d, per subject %d: want the stream's",
			got.Replicas, got.MaxAge, got.MaxMsgs, got.MaxMsgsPerSubject)
	}
	if got.MaxBytes < 10<<20+10<<20/16 || got.MaxBytes > 64<<20 || !e.clamped.Load() {
		t.Errorf("UPLINKS: limit %d holding 10 MiB (clamped %v)", got.MaxBytes, e.clamped.Load())
	}
	info.State.Bytes = 100 << 10 // drained: the configured limit applies
	if got := e.safeConfig(info, e.cfg.uplinksConfig(), e.keepUplinks); got.MaxBytes != 1<<20 || e.clamped.Load() {
		t.Errorf("UPLINKS drained: limit %d (clamped %v), want 1 MiB", got.MaxBytes, e.clamped.Load())
	}
	info.Config.MaxBytes = -1 // no limit before: one now, above what it holds
	info.State.Bytes = 10 << 20
	if got := e.safeConfig(info, e.cfg.uplinksConfig(), e.keepUplinks); got.MaxBytes < 10<<20 {
		t.Errorf("UPLINKS without a limit before: %d", got.MaxBytes)
	}

	live := e.cfg.liveConfig()
	live.MaxBytes, live.MaxAge, live.MaxMsgsPerSubject = 1<<20, time.Minute, 5
	got = e.safeConfig(info, live, nil)
	if got.Replicas != 3 || got.MaxBytes != 1<<20 || got.MaxAge != time.Minute || got.MaxMsgsPerSubject != 5 {
		t.Errorf("LIVELOG: %+v: want its lowered limits, and the stream's replicas", got)
	}
}

// LIVELOG's limits are its retention: lowering LIVELOG_PER_DEVICE at a
// start deletes each device's oldest entries beyond it, as asked.
func TestLowerLiveLogLimitsApplies(t *testing.T) {
	dir := t.TempDir()
	e := openEmbedded(t, Config{DataDir: dir, LivePerDevice: 10})
	logN(t, e, "L", 10)
	e.Close()
	e = openEmbedded(t, Config{DataDir: dir, LivePerDevice: 3})
	info, err := e.live.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 || info.Config.MaxMsgsPerSubject != 3 {
		t.Fatalf("LIVELOG holds %d entries, per device %d: want 3", info.State.Msgs, info.Config.MaxMsgsPerSubject)
	}
}

// The same configuration again updates nothing.
func TestEnsureSameConfigUpdatesNothing(t *testing.T) {
	for _, mode := range []string{"NATS_URL", "embedded"} {
		t.Run(mode, func(t *testing.T) {
			cfg := Config{Storage: true}
			if mode == "NATS_URL" {
				cfg.URL = natstest.Start(t).URL
			}
			e := openEmbedded(t, cfg)
			for _, want := range []jetstream.StreamConfig{e.cfg.liveConfig(), e.cfg.uplinksConfig()} {
				s, err := e.js.Stream(context.Background(), want.Name)
				if err != nil {
					t.Fatal(err)
				}
				if !sameConfig(s.CachedInfo().Config, want) {
					t.Errorf("stream %s: %+v differs from %+v", want.Name, s.CachedInfo().Config, want)
				}
			}
		})
	}
}
