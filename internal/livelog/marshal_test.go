package livelog

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

// compare fails unless appendEntry takes e and writes what encoding/json does.
func compare(t *testing.T, e *Entry) {
	t.Helper()
	want, err := json.Marshal(e)
	if err != nil {
		t.Fatalf("encoding/json: %v", err)
	}
	got, ok := appendEntry(nil, e)
	if !ok {
		t.Fatalf("appendEntry refused %+v", e.Data)
	}
	if string(got) != string(want) {
		t.Fatalf("appendEntry:\n%s\nencoding/json:\n%s", got, want)
	}
}

func TestAppendEntryMatchesEncodingJSON(t *testing.T) {
	at := Timestamp(time.Date(2024, 1, 15, 11, 30, 0, 123456789, time.FixedZone("CET", 3600)))
	for _, d := range []*UplinkData{
		{},
		{UplinkCount: math.MaxUint32, Temperature: ptr(float32(23.5)), WifiCount: 3,
			Activity: &Activity{Sleep: 3600, Modem: 45, Gnss: 120, Wifi: 30, Other: math.MaxUint32},
			Reboot:   &Reboot{Reason: "watchdog", Count: 3}, BatteryMV: ptr(uint32(3600)), ConfigApplied: ptr(false)},
		{Temperature: ptr(float32(1e-7)), Gnss: &Gnss{Lat: 1e21, Lon: -1e-7, AccuracyM: 1e20}},
		{Temperature: ptr(float32(-0.1)), Gnss: &Gnss{Lat: 52.520008, Lon: 13.404954, AccuracyM: 3.3}},
		{Temperature: ptr(float32(math.Copysign(0, -1))), Gnss: &Gnss{Lat: 5e-324, Lon: math.MaxFloat64, AccuracyM: math.MaxFloat32}},
		{Temperature: ptr(float32(123456789)), Gnss: &Gnss{Lat: 1e-6, Lon: 999999999999999999999, AccuracyM: 1e-6}},
		{Config: &Config{}},
		{Config: &Config{HwVersion: "hw<1>&\"2\"\\", FwVersion: "fw\u2028ü\x01\xff"}},
		{Config: &Config{HeartbeatInterval: ptr(uint32(0)), GnssInterval: ptr(uint32(1)), WifiScanInterval: ptr(uint32(2)),
			ConfigVersion: ptr(uint32(math.MaxUint32)), FwVersion: "2.0.1"}},
		{Config: &Config{ConfigVersion: ptr(uint32(7))}, ConfigApplied: ptr(true)},
	} {
		compare(t, &Entry{DeviceID: "DEV-1", Timestamp: at, Type: TypeUplink, Message: "Received uplink #42", Data: d})
	}
	compare(t, &Entry{DeviceID: "D<&>", Timestamp: at, Type: "ty\"pe", Message: "über\n", Data: &UplinkData{}})
}

func TestAppendEntryLeavesTheRestToEncodingJSON(t *testing.T) {
	for _, e := range []*Entry{
		{Data: map[string]bool{"recovered": false}},
		{Data: (*UplinkData)(nil)},
		{Data: &UplinkData{Temperature: ptr(float32(math.NaN()))}},
		{Data: &UplinkData{Gnss: &Gnss{Lat: math.Inf(1)}}},
	} {
		if _, ok := appendEntry(nil, e); ok {
			t.Errorf("appendEntry took %#v", e.Data)
		}
	}
	if _, err := (&Entry{Data: &UplinkData{Temperature: ptr(float32(math.NaN()))}}).Marshal(); err == nil {
		t.Error("an entry with a NaN encoded without error, as encoding/json would not")
	}
}

// FuzzAppendEntry: the hand encoder and encoding/json agree on any uplink
// entry, whatever its strings (device-supplied versions) and numbers.
func FuzzAppendEntry(f *testing.F) {
	f.Add("DEV-1", "Received uplink #1", "hw-1.2", "fw<2>", "watchdog", uint32(42), float32(23.5), 52.5, -13.25, float32(3), uint32(7), byte(0xff))
	f.Add("", "", "", "\xff\u2028", "", uint32(0), float32(1e-7), 1e21, -1e-300, float32(1e30), uint32(0), byte(0))
	f.Fuzz(func(t *testing.T, dev, msg, hw, fw, reason string, n uint32, temp float32, lat, lon float64, acc float32, cv uint32, mask byte) {
		d := &UplinkData{UplinkCount: n, WifiCount: int(n % 7)}
		if mask&1 != 0 {
			d.Temperature = &temp
		}
		if mask&2 != 0 {
			d.Activity = &Activity{Sleep: n, Modem: cv, Gnss: n ^ cv, Wifi: 1, Other: 0}
		}
		if mask&4 != 0 {
			d.Reboot = &Reboot{Reason: reason, Count: cv}
		}
		if mask&8 != 0 {
			d.Config = &Config{HwVersion: hw, FwVersion: fw}
			if mask&16 != 0 {
				d.Config.ConfigVersion, d.Config.GnssInterval = &cv, &n
			}
		}
		if mask&32 != 0 {
			d.Gnss = &Gnss{Lat: lat, Lon: lon, AccuracyM: acc}
		}
		if mask&64 != 0 {
			d.BatteryMV = &cv
		}
		if mask&128 != 0 {
			b := n%2 == 0
			d.ConfigApplied = &b
		}
		e := &Entry{DeviceID: dev, Timestamp: Timestamp(time.Unix(int64(n), int64(cv%1e9))), Type: TypeUplink, Message: msg, Data: d}
		want, err := json.Marshal(e)
		got, ok := appendEntry(nil, e)
		switch {
		case err != nil && ok:
			t.Fatalf("encoding/json refuses (%v), appendEntry wrote %s", err, got)
		case err == nil && !ok:
			t.Fatalf("appendEntry refused what encoding/json writes: %s", want)
		case ok && string(got) != string(want):
			t.Fatalf("appendEntry:\n%s\nencoding/json:\n%s", got, want)
		}
	})
}

// TestAppendMarshalAppends: what AppendMarshal adds to a buffer in use is
// what Marshal returns, for entries appendEntry takes and for the ones it
// leaves to encoding/json; what the buffer held stays.
func TestAppendMarshalAppends(t *testing.T) {
	at := Timestamp(time.Date(2024, 1, 15, 10, 30, 0, 0, time.UTC))
	for _, e := range []*Entry{
		{DeviceID: "DEV-1", Timestamp: at, Type: TypeUplink, Message: "m", Data: &UplinkData{UplinkCount: 7}},
		{DeviceID: "DEV-1", Timestamp: at, Type: "status", Data: map[string]bool{"recovered": false}},
	} {
		want, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		buf := append(make([]byte, 0, 4), "old:"...)
		got, err := e.AppendMarshal(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "old:"+string(want) {
			t.Errorf("AppendMarshal gave %q, want %q", got, "old:"+string(want))
		}
	}
	bad := &Entry{Data: func() {}}
	if got, err := bad.AppendMarshal([]byte("old:")); err == nil || string(got) != "old:" {
		t.Errorf("an entry encoding/json refuses: %q, %v; want the buffer as it was and an error", got, err)
	}
}
