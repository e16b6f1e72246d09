package livelog

import (
	"encoding/json"
	"math"
	"strconv"
	"time"
)

// appendEntry encodes an uplink entry by hand, byte for byte what
// encoding/json makes of it (TestAppendEntryMatchesEncodingJSON,
// FuzzAppendEntry), without reflection: an uplink entry is built for
// every accepted uplink, and encoding/json was 5% of coap-server's CPU.
// ok is false for what it does not take on (another Data type, a float
// that is not finite: encoding/json refuses those); Marshal then falls
// back to encoding/json.
func appendEntry(b []byte, e *Entry) (_ []byte, ok bool) {
	d, isUplink := e.Data.(*UplinkData)
	if !isUplink || d == nil || !d.finite() {
		return b, false
	}
	b = append(b, `{"deviceId":`...)
	b = appendString(b, e.DeviceID)
	b = append(b, `,"timestamp":"`...)
	b = time.Time(e.Timestamp).UTC().AppendFormat(b, TimeFormat)
	b = append(b, `","type":`...)
	b = appendString(b, e.Type)
	b = append(b, `,"message":`...)
	b = appendString(b, e.Message)
	b = append(b, `,"data":{"uplink_count":`...)
	b = strconv.AppendUint(b, uint64(d.UplinkCount), 10)
	b = append(b, `,"temperature":`...)
	if d.Temperature != nil {
		b = appendFloat(b, float64(*d.Temperature), 32)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"activity":`...)
	if a := d.Activity; a != nil {
		b = append(b, `{"sleep":`...)
		b = strconv.AppendUint(b, uint64(a.Sleep), 10)
		b = append(b, `,"modem":`...)
		b = strconv.AppendUint(b, uint64(a.Modem), 10)
		b = append(b, `,"gnss":`...)
		b = strconv.AppendUint(b, uint64(a.Gnss), 10)
		b = append(b, `,"wifi":`...)
		b = strconv.AppendUint(b, uint64(a.Wifi), 10)
		b = append(b, `,"other":`...)
		b = strconv.AppendUint(b, uint64(a.Other), 10)
		b = append(b, '}')
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"wifi_count":`...)
	b = strconv.AppendInt(b, int64(d.WifiCount), 10)
	b = append(b, `,"reboot":`...)
	if r := d.Reboot; r != nil {
		b = append(b, `{"reason":`...)
		b = appendString(b, r.Reason)
		b = append(b, `,"count":`...)
		b = strconv.AppendUint(b, uint64(r.Count), 10)
		b = append(b, '}')
	} else {
		b = append(b, "null"...)
	}
	if c := d.Config; c != nil {
		b = append(b, `,"config":{`...)
		n := len(b)
		b = appendOptUint(b, n, "heartbeat_interval", c.HeartbeatInterval)
		b = appendOptString(b, n, "hw_version", c.HwVersion)
		b = appendOptString(b, n, "fw_version", c.FwVersion)
		b = appendOptUint(b, n, "gnss_interval", c.GnssInterval)
		b = appendOptUint(b, n, "wifi_scan_interval", c.WifiScanInterval)
		b = appendOptUint(b, n, "config_version", c.ConfigVersion)
		b = append(b, '}')
	}
	if g := d.Gnss; g != nil {
		b = append(b, `,"gnss":{"lat":`...)
		b = appendFloat(b, g.Lat, 64)
		b = append(b, `,"lon":`...)
		b = appendFloat(b, g.Lon, 64)
		b = append(b, `,"accuracy_m":`...)
		b = appendFloat(b, float64(g.AccuracyM), 32)
		b = append(b, '}')
	}
	if d.BatteryMV != nil {
		b = append(b, `,"battery_mv":`...)
		b = strconv.AppendUint(b, uint64(*d.BatteryMV), 10)
	}
	if d.ConfigApplied != nil {
		b = append(b, `,"config_applied":`...)
		b = strconv.AppendBool(b, *d.ConfigApplied)
	}
	return append(b, "}}"...), true
}

// finite reports whether every float of d can be encoded.
func (d *UplinkData) finite() bool {
	ok := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	if d.Temperature != nil && !ok(float64(*d.Temperature)) {
		return false
	}
	if g := d.Gnss; g != nil && (!ok(g.Lat) || !ok(g.Lon) || !ok(float64(g.AccuracyM))) {
		return false
	}
	return true
}

// appendOptUint appends ,"key":v (no comma right after the object's
// opening, at start) when v is set: omitempty.
func appendOptUint(b []byte, start int, key string, v *uint32) []byte {
	if v == nil {
		return b
	}
	b = appendKey(b, start, key)
	return strconv.AppendUint(b, uint64(*v), 10)
}

func appendOptString(b []byte, start int, key, v string) []byte {
	if v == "" {
		return b
	}
	b = appendKey(b, start, key)
	return appendString(b, v)
}

func appendKey(b []byte, start int, key string) []byte {
	if len(b) > start {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, key...)
	return append(b, `":`...)
}

// appendString appends s as encoding/json does: as is when every byte is
// printable ASCII that it leaves alone, else through encoding/json (which
// escapes ", \, control characters, <, > and &, U+2028 and U+2029, and
// replaces invalid UTF-8).
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendFloat is encoding/json's float encoding (floatEncoder): 'f' unless
// the magnitude is below 1e-6 or at least 1e21, then 'e' with a one-digit
// negative exponent written without its leading zero. f is finite.
func appendFloat(b []byte, f float64, bits int) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	b = strconv.AppendFloat(b, f, format, -1, bits)
	if format == 'e' {
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}
