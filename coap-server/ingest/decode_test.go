package ingest

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func ptr[T any](v T) *T { return &v }

// seedUplinks are payloads as real devices send them.
func seedUplinks() []*nbiotv1.Uplink {
	return []*nbiotv1.Uplink{
		{DeviceId: "ABC123", UplinkCount: 42, Temperature: ptr(float32(23.5)),
			Activity: &nbiotv1.Activity{Sleep: 3600, Modem: 45, Gnss: 120, Wifi: 30, Other: 60},
			WifiAps:  []*nbiotv1.WifiAp{{Bssid: []byte{0, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e}, Rssi: -67, Channel: 6}}},
		{DeviceId: "dev_1-boot", UplinkCount: 1,
			Reboot: &nbiotv1.Reboot{Reason: nbiotv1.Reboot_REASON_WATCHDOG, Count: 3},
			Config: &nbiotv1.DeviceConfig{HeartbeatInterval: ptr(uint32(3600)), HwVersion: "rev-c", FwVersion: "1.4.2", GnssInterval: ptr(uint32(0))},
			Gnss:   &nbiotv1.Gnss{Lat: 59.33, Lon: 18.06, AccuracyM: 12}, BatteryMv: ptr(uint32(3600))},
		{UplinkCount: 7},
	}
}

func TestDecode(t *testing.T) {
	full, _ := proto.Marshal(seedUplinks()[0])
	noID, _ := proto.Marshal(seedUplinks()[2])
	other, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "OTHER"})
	nan, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "N", Temperature: ptr(float32(math.NaN()))})
	badGnss, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "G", Gnss: &nbiotv1.Gnss{Lat: 91}})
	nul, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: "V", Config: &nbiotv1.DeviceConfig{FwVersion: "1\x00"}})
	long, _ := proto.Marshal(&nbiotv1.Uplink{DeviceId: strings.Repeat("a", 65)})
	tests := []struct {
		name     string
		payload  []byte
		identity string
		wantID   string
		wantErr  error
	}{
		{"full uplink", full, "", "ABC123", nil},
		{"empty payload has no device", nil, "", "", ErrDeviceID},
		{"garbage", []byte{0xff, 0x01}, "", "", ErrUndecodable},
		{"device ID too long", long, "", "", ErrDeviceID},
		{"identity names a device without device_id", noID, "DTLS-7", "DTLS-7", nil},
		{"identity equal to device_id", full, "ABC123", "ABC123", nil},
		{"identity differs from device_id", other, "DTLS-7", "DTLS-7", ErrIdentity},
		{"NaN temperature", nan, "", "N", ErrInvalid},
		{"latitude out of range", badGnss, "", "G", ErrInvalid},
		{"NUL in fw_version", nul, "", "V", ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := Decode(tc.payload, tc.identity, new(nbiotv1.Uplink))
			if id != tc.wantID || !errors.Is(err, tc.wantErr) {
				t.Fatalf("Decode = %q, %v; want %q, %v", id, err, tc.wantID, tc.wantErr)
			}
		})
	}
}

// FuzzDecode feeds the decode-and-entry path: whatever the payload, it
// either fails with a known reason, or yields a valid device ID and an
// entry that encodes as JSON.
func FuzzDecode(f *testing.F) {
	for _, u := range seedUplinks() {
		b, _ := proto.Marshal(u)
		f.Add(b, "")
		f.Add(b, "DTLS-ID")
	}
	f.Add([]byte{}, "")
	f.Fuzz(func(t *testing.T, payload []byte, identity string) {
		if identity != "" && !livelog.ValidDeviceID(identity) {
			return // the DTLS layer only hands over provisioned identities
		}
		u := new(nbiotv1.Uplink)
		id, err := Decode(payload, identity, u)
		if err != nil {
			known := errors.Is(err, ErrUndecodable) || errors.Is(err, ErrDeviceID) || errors.Is(err, ErrIdentity) || errors.Is(err, ErrInvalid)
			if !known {
				t.Fatalf("unknown error %v", err)
			}
			if id != "" && !livelog.ValidDeviceID(id) {
				t.Fatalf("rejection names invalid device %q", id)
			}
			return
		}
		if !livelog.ValidDeviceID(id) {
			t.Fatalf("accepted invalid device ID %q", id)
		}
		b, err := livelog.Uplink(id, time.Unix(0, 0), u, nil).Marshal()
		if err != nil {
			t.Fatalf("entry does not encode: %v", err)
		}
		if !json.Valid(b) {
			t.Fatalf("invalid JSON %s", b)
		}
	})
}
