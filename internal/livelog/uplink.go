package livelog

import (
	"strconv"
	"strings"
	"time"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// UplinkData is the data of an uplink entry. The first five keys are always
// present (null when the device did not send them); the others are added
// when the device reported them.
type UplinkData struct {
	UplinkCount uint32    `json:"uplink_count"`
	Temperature *float32  `json:"temperature"`
	Activity    *Activity `json:"activity"`
	WifiCount   int       `json:"wifi_count"`
	Reboot      *Reboot   `json:"reboot"`
	Config      *Config   `json:"config,omitempty"`
	Gnss        *Gnss     `json:"gnss,omitempty"`
	BatteryMV   *uint32   `json:"battery_mv,omitempty"`
	// ConfigApplied is set when a downlink was sent to the device: whether the
	// config_version it now reports is the one sent last.
	ConfigApplied *bool `json:"config_applied,omitempty"`
}

// Activity is seconds per state since the previous uplink.
type Activity struct {
	Sleep uint32 `json:"sleep"`
	Modem uint32 `json:"modem"`
	Gnss  uint32 `json:"gnss"`
	Wifi  uint32 `json:"wifi"`
	Other uint32 `json:"other"`
}

// Reboot is the reboot reason in lower case ("watchdog") and the reboot count.
type Reboot struct {
	Reason string `json:"reason"`
	Count  uint32 `json:"count"`
}

// Config is a device configuration as reported or sent.
type Config struct {
	HeartbeatInterval *uint32 `json:"heartbeat_interval,omitempty"`
	HwVersion         string  `json:"hw_version,omitempty"`
	FwVersion         string  `json:"fw_version,omitempty"`
	GnssInterval      *uint32 `json:"gnss_interval,omitempty"`
	WifiScanInterval  *uint32 `json:"wifi_scan_interval,omitempty"`
	ConfigVersion     *uint32 `json:"config_version,omitempty"`
}

// Gnss is a position fix.
type Gnss struct {
	Lat       float64 `json:"lat"`
	Lon       float64 `json:"lon"`
	AccuracyM float32 `json:"accuracy_m"`
}

// Uplink builds the entry of an accepted uplink received at now, for the
// device deviceID (which may come from the DTLS identity rather than u).
// configApplied is its config_applied: nil while no downlink was sent to
// the device, else whether u reports the config_version sent last
// (coap-server/downlink decides).
func Uplink(deviceID string, now time.Time, u *nbiotv1.Uplink, configApplied *bool) *Entry {
	d := &UplinkData{
		UplinkCount:   u.GetUplinkCount(),
		Temperature:   u.Temperature,
		WifiCount:     len(u.GetWifiAps()),
		BatteryMV:     u.BatteryMv,
		ConfigApplied: configApplied,
	}
	if a := u.GetActivity(); a != nil {
		d.Activity = &Activity{Sleep: a.GetSleep(), Modem: a.GetModem(), Gnss: a.GetGnss(), Wifi: a.GetWifi(), Other: a.GetOther()}
	}
	if r := u.GetReboot(); r != nil {
		d.Reboot = &Reboot{Reason: ReasonName(r.GetReason()), Count: r.GetCount()}
	}
	if c := u.GetConfig(); c != nil {
		d.Config = ConfigOf(c)
	}
	if g := u.GetGnss(); g != nil {
		d.Gnss = &Gnss{Lat: g.GetLat(), Lon: g.GetLon(), AccuracyM: g.GetAccuracyM()}
	}
	return &Entry{
		DeviceID:  deviceID,
		Timestamp: Timestamp(now),
		Type:      TypeUplink,
		Message:   "Received uplink #" + strconv.FormatUint(uint64(u.GetUplinkCount()), 10),
		Data:      d,
	}
}

// ConfigOf converts a protobuf DeviceConfig to its live-log form.
func ConfigOf(c *nbiotv1.DeviceConfig) *Config {
	return &Config{
		HeartbeatInterval: c.HeartbeatInterval,
		HwVersion:         c.GetHwVersion(),
		FwVersion:         c.GetFwVersion(),
		GnssInterval:      c.GnssInterval,
		WifiScanInterval:  c.WifiScanInterval,
		ConfigVersion:     c.ConfigVersion,
	}
}

// ReasonName is the reboot reason as the live log and the database show it:
// the enum name in lower case without its prefix ("watchdog", "power_on").
func ReasonName(r nbiotv1.Reboot_Reason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "REASON_"))
}
