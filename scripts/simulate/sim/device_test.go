package sim

import (
	"bytes"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func TestActivityAddsUpToInterval(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		d := NewDevice("SIM-0001", seed, 0.05)
		for i := 0; i < 500; i++ {
			u := d.Next()
			a := u.GetActivity()
			sum := a.GetSleep() + a.GetModem() + a.GetGnss() + a.GetWifi() + a.GetOther()
			if sum != d.Interval() || sum == 0 {
				t.Fatalf("seed %d uplink %d: activity %v sums to %d, interval %d", seed, i, a, sum, d.Interval())
			}
			hb := d.config.GetHeartbeatInterval()
			if u.Reboot == nil && (sum < hb*95/100 || sum > hb*105/100+1) {
				t.Fatalf("seed %d uplink %d: interval %d is not heartbeat %d ± 5 %%", seed, i, sum, hb)
			}
		}
	}
}

func TestWifiScans(t *testing.T) {
	counts := map[int]int{}
	for seed := uint64(1); seed <= 10; seed++ {
		d := NewDevice("SIM-0001", seed, 0)
		for i := 0; i < 300; i++ {
			u := d.Next()
			aps := u.GetWifiAps()
			counts[len(aps)]++
			if len(aps) > MaxAPs {
				t.Fatalf("%d APs, want at most %d", len(aps), MaxAPs)
			}
			if len(aps) > 0 && u.GetActivity().GetWifi() == 0 {
				t.Errorf("APs reported without wifi activity")
			}
			seen := map[string]bool{}
			for j, ap := range aps {
				if len(ap.GetBssid()) != 6 {
					t.Fatalf("bssid %x has %d bytes, want 6", ap.GetBssid(), len(ap.GetBssid()))
				}
				if ap.GetBssid()[0]&1 != 0 {
					t.Errorf("bssid %x is a multicast address", ap.GetBssid())
				}
				if seen[string(ap.GetBssid())] {
					t.Errorf("bssid %x twice in one scan", ap.GetBssid())
				}
				seen[string(ap.GetBssid())] = true
				if ap.GetRssi() < -100 || ap.GetRssi() > -30 {
					t.Errorf("rssi %d out of [-100, -30]", ap.GetRssi())
				}
				if !validChannel(ap.GetChannel()) {
					t.Errorf("channel %d", ap.GetChannel())
				}
				if j > 0 && ap.GetRssi() > aps[j-1].GetRssi() {
					t.Errorf("scan not sorted strongest first")
				}
			}
		}
	}
	if counts[0] == 0 || counts[MaxAPs] == 0 {
		t.Errorf("scan sizes %v: want both 0 and %d to occur", counts, MaxAPs)
	}
}

func validChannel(c uint32) bool {
	for _, v := range wifiChannels {
		if c == v {
			return true
		}
	}
	return false
}

func TestRebootSemantics(t *testing.T) {
	d := NewDevice("SIM-0007", 3, 0.2)
	first := d.Next()
	if r := first.GetReboot(); r.GetReason() != nbiotv1.Reboot_REASON_POWER_ON || r.GetCount() != 1 {
		t.Fatalf("first uplink: reboot %v, want power_on #1", r)
	}
	if first.GetUplinkCount() != 1 || first.GetConfig() == nil || first.GetConfig().GetHwVersion() == "" {
		t.Fatalf("first uplink: count %d config %v, want 1 and the config", first.GetUplinkCount(), first.GetConfig())
	}
	prevCount, boots, reboots := uint32(1), uint32(1), 0
	for i := 0; i < 1000; i++ {
		u := d.Next()
		if r := u.GetReboot(); r != nil {
			reboots++
			boots++
			if r.GetCount() != boots {
				t.Fatalf("reboot count %d, want %d", r.GetCount(), boots)
			}
			if r.GetReason() == nbiotv1.Reboot_REASON_UNSPECIFIED || r.GetReason() == nbiotv1.Reboot_REASON_POWER_ON {
				t.Fatalf("reboot reason %v for a running device", r.GetReason())
			}
			if u.GetUplinkCount() != 1 {
				t.Fatalf("uplink_count %d after a reboot, want 1", u.GetUplinkCount())
			}
			if u.GetConfig() == nil {
				t.Fatalf("no config on the first uplink after a reboot")
			}
			if u.GetActivity().GetSleep()+u.GetActivity().GetModem() > d.config.GetHeartbeatInterval()+31 {
				t.Fatalf("activity since boot %v exceeds a heartbeat", u.GetActivity())
			}
		} else {
			if u.GetUplinkCount() != prevCount+1 {
				t.Fatalf("uplink_count %d after %d without a reboot", u.GetUplinkCount(), prevCount)
			}
			if u.GetConfig() != nil {
				t.Fatalf("config on uplink #%d, not the first after boot", u.GetUplinkCount())
			}
		}
		prevCount = u.GetUplinkCount()
	}
	if reboots < 100 || reboots > 300 {
		t.Errorf("%d reboots in 1000 uplinks at p=0.2", reboots)
	}
}

func TestNoRebootsWhenDisabled(t *testing.T) {
	d := NewDevice("SIM-0001", 1, -1)
	for i := 1; i <= 2000; i++ {
		u := d.Next()
		if u.GetUplinkCount() != uint32(i) || (i > 1) != (u.GetReboot() == nil) {
			t.Fatalf("uplink %d: count %d reboot %v", i, u.GetUplinkCount(), u.GetReboot())
		}
	}
}

func TestTemperatureDrifts(t *testing.T) {
	d := NewDevice("SIM-0001", 9, 0)
	prev := float64(d.Next().GetTemperature())
	changed := 0
	for i := 0; i < 2000; i++ {
		cur := float64(d.Next().GetTemperature())
		if math.Abs(cur-prev) > 5 {
			t.Fatalf("temperature jumped %.2f → %.2f", prev, cur)
		}
		if math.Abs(cur-d.baseTemp) > 15 {
			t.Fatalf("temperature %.2f wandered far from %.2f", cur, d.baseTemp)
		}
		if cur != prev {
			changed++
		}
		prev = cur
	}
	if changed < 1500 {
		t.Errorf("temperature changed only %d times in 2000 uplinks", changed)
	}
}

// TestServerAcceptsPayloads runs every generated uplink through the server's
// own validation (ingest.Decode) and size limit.
func TestServerAcceptsPayloads(t *testing.T) {
	var withGnss, withBattery int
	for seed := uint64(1); seed <= 20; seed++ {
		d := NewDevice("SIM-0042", seed, 0.02)
		for i := 0; i < 200; i++ {
			b, err := proto.Marshal(d.Next())
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > ingest.DefaultMaxPayload {
				t.Fatalf("payload of %d bytes exceeds the server's %d", len(b), ingest.DefaultMaxPayload)
			}
			var u nbiotv1.Uplink
			id, err := ingest.Decode(b, "", &u)
			if err != nil || id != "SIM-0042" {
				t.Fatalf("ingest.Decode: %q, %v", id, err)
			}
			if u.Gnss != nil {
				withGnss++
			}
			if u.BatteryMv != nil {
				withBattery++
			}
		}
	}
	if withGnss == 0 || withBattery == 0 {
		t.Errorf("gnss on %d, battery on %d of 4000 uplinks: want some of each", withGnss, withBattery)
	}
}

func TestSameSeedSamePayloads(t *testing.T) {
	a, b := NewDevice("SIM-0001", 5, 0.1), NewDevice("SIM-0001", 5, 0.1)
	c := NewDevice("SIM-0001", 6, 0.1)
	differs := false
	for i := 0; i < 50; i++ {
		ua, _ := proto.Marshal(a.Next())
		ub, _ := proto.Marshal(b.Next())
		uc, _ := proto.Marshal(c.Next())
		if !bytes.Equal(ua, ub) {
			t.Fatalf("uplink %d differs for the same seed", i)
		}
		differs = differs || !bytes.Equal(ua, uc)
	}
	if !differs {
		t.Error("different seeds gave the same payloads")
	}
}

func TestBumpPatch(t *testing.T) {
	for in, want := range map[string]string{"1.4.2": "1.4.3", "1.4.9": "1.4.10", "v2": "v3", "beta": "beta+1", "": "+1"} {
		if got := bumpPatch(in); got != want {
			t.Errorf("bumpPatch(%q) = %q, want %q", in, got, want)
		}
	}
}
