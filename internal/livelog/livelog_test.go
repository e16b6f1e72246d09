package livelog

import (
	"strings"
	"testing"
	"time"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func TestValidDeviceID(t *testing.T) {
	for id, want := range map[string]bool{
		"ABC123": true, "a_b-C": true, strings.Repeat("x", 64): true,
		"": false, strings.Repeat("x", 65): false, "with space": false, "ümlaut": false,
		"dot.ted": false, "slash/": false, "nul\x00": false,
	} {
		if got := ValidDeviceID(id); got != want {
			t.Errorf("ValidDeviceID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestUplinkEntryShape(t *testing.T) {
	at := time.Date(2024, 1, 15, 11, 30, 0, 123456789, time.FixedZone("CET", 3600))
	tests := []struct {
		name    string
		u       *nbiotv1.Uplink
		applied *bool
		want    string
	}{
		{"only a counter: the five keys are null, not missing",
			&nbiotv1.Uplink{DeviceId: "D", UplinkCount: 1}, nil,
			`{"deviceId":"D","timestamp":"2024-01-15T10:30:00.123Z","type":"uplink","message":"Received uplink #1","data":{"uplink_count":1,"temperature":null,"activity":null,"wifi_count":0,"reboot":null}}`},
		{"reboot and extras",
			&nbiotv1.Uplink{DeviceId: "D", UplinkCount: 0, Temperature: new(float32),
				Reboot:    &nbiotv1.Reboot{Reason: nbiotv1.Reboot_REASON_FIRMWARE_UPDATE, Count: 3},
				Gnss:      &nbiotv1.Gnss{Lat: 1.5, Lon: -2.25, AccuracyM: 10},
				BatteryMv: new(uint32)}, nil,
			`{"deviceId":"D","timestamp":"2024-01-15T10:30:00.123Z","type":"uplink","message":"Received uplink #0","data":{"uplink_count":0,"temperature":0,"activity":null,"wifi_count":0,"reboot":{"reason":"firmware_update","count":3},"gnss":{"lat":1.5,"lon":-2.25,"accuracy_m":10},"battery_mv":0}}`},
		{"after a downlink was sent: config_applied, even when false",
			&nbiotv1.Uplink{DeviceId: "D", UplinkCount: 2}, new(bool),
			`{"deviceId":"D","timestamp":"2024-01-15T10:30:00.123Z","type":"uplink","message":"Received uplink #2","data":{"uplink_count":2,"temperature":null,"activity":null,"wifi_count":0,"reboot":null,"config_applied":false}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Uplink("D", at, tc.u, tc.applied).Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("got  %s\nwant %s", b, tc.want)
			}
		})
	}
}

func TestDownlinkEntryShape(t *testing.T) {
	at := time.Date(2024, 1, 15, 11, 30, 0, 0, time.UTC)
	hb := uint32(600)
	cfg := &Config{HeartbeatInterval: &hb}
	for state, want := range map[string]string{
		DownlinkQueued:  `{"deviceId":"D","timestamp":"2024-01-15T11:30:00.000Z","type":"downlink","message":"Configuration v7 queued","data":{"downlink_id":7,"state":"queued","config_version":7,"config":{"heartbeat_interval":600}}}`,
		DownlinkSent:    `{"deviceId":"D","timestamp":"2024-01-15T11:30:00.000Z","type":"downlink","message":"Sent configuration v7","data":{"downlink_id":7,"state":"sent","config_version":7,"config":{"heartbeat_interval":600}}}`,
		DownlinkApplied: `{"deviceId":"D","timestamp":"2024-01-15T11:30:00.000Z","type":"downlink","message":"Configuration v7 applied","data":{"downlink_id":7,"state":"applied","config_version":7,"config":{"heartbeat_interval":600}}}`,
	} {
		b, err := Downlink("D", at, 7, state, cfg).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != want {
			t.Errorf("%s:\ngot  %s\nwant %s", state, b, want)
		}
	}
}

func TestPeekDeviceID(t *testing.T) {
	b, _ := Status("DEV", time.Now(), "upstream lost", nil).Marshal()
	if id, err := PeekDeviceID(b); id != "DEV" || err != nil {
		t.Errorf("PeekDeviceID = %q, %v", id, err)
	}
	for _, bad := range []string{`{}`, `not json`, `{"deviceId":7}`} {
		if _, err := PeekDeviceID([]byte(bad)); err == nil {
			t.Errorf("PeekDeviceID(%s): no error", bad)
		}
	}
}

// FuzzPeekDeviceID: the relay parses frames from upstream with it.
func FuzzPeekDeviceID(f *testing.F) {
	b, _ := Uplink("ABC", time.Now(), &nbiotv1.Uplink{UplinkCount: 1}, nil).Marshal()
	f.Add(b)
	f.Add([]byte(`{"deviceId":""}`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		id, err := PeekDeviceID(frame)
		if err == nil && id == "" {
			t.Fatal("empty device ID without error")
		}
	})
}

// The config_version of a downlink is its id below 2^32, then the ids
// counted from 1 again, never 0 (a device never configured may report 0).
func TestConfigVersion(t *testing.T) {
	for _, tc := range []struct {
		id   int64
		want uint32
	}{{1, 1}, {42, 42}, {1<<32 - 1, 1<<32 - 1}, {1 << 32, 1}, {1<<32 + 5, 6}, {2 * (1<<32 - 1), 1<<32 - 1}, {2*(1<<32-1) + 1, 1}, {0, 0}, {-3, 0}} {
		if got := ConfigVersion(tc.id); got != tc.want {
			t.Errorf("ConfigVersion(%d) = %d, want %d", tc.id, got, tc.want)
		}
	}
	for id := int64(1<<32 - 1000); id < 1<<32+1000; id++ {
		if ConfigVersion(id) == 0 {
			t.Fatalf("ConfigVersion(%d) = 0", id)
		}
	}
}
