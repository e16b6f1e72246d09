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
		name string
		u    *nbiotv1.Uplink
		want string
	}{
		{"only a counter: the five keys are null, not missing",
			&nbiotv1.Uplink{DeviceId: "D", UplinkCount: 1},
			`{"deviceId":"D","timestamp":"2024-01-15T10:30:00.123Z","type":"uplink","message":"Received uplink #1","data":{"uplink_count":1,"temperature":null,"activity":null,"wifi_count":0,"reboot":null}}`},
		{"reboot and extras",
			&nbiotv1.Uplink{DeviceId: "D", UplinkCount: 0, Temperature: new(float32),
				Reboot:    &nbiotv1.Reboot{Reason: nbiotv1.Reboot_REASON_FIRMWARE_UPDATE, Count: 3},
				Gnss:      &nbiotv1.Gnss{Lat: 1.5, Lon: -2.25, AccuracyM: 10},
				BatteryMv: new(uint32)},
			`{"deviceId":"D","timestamp":"2024-01-15T10:30:00.123Z","type":"uplink","message":"Received uplink #0","data":{"uplink_count":0,"temperature":0,"activity":null,"wifi_count":0,"reboot":{"reason":"firmware_update","count":3},"gnss":{"lat":1.5,"lon":-2.25,"accuracy_m":10},"battery_mv":0}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Uplink("D", at, tc.u).Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("got  %s\nwant %s", b, tc.want)
			}
		})
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
	b, _ := Uplink("ABC", time.Now(), &nbiotv1.Uplink{UplinkCount: 1}).Marshal()
	f.Add(b)
	f.Add([]byte(`{"deviceId":""}`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		id, err := PeekDeviceID(frame)
		if err == nil && id == "" {
			t.Fatal("empty device ID without error")
		}
	})
}
