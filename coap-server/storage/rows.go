package storage

import (
	"encoding/hex"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// Data types of sensor_data rows (docs/contract.md). The migration's check
// constraint lists them too; mapping_test.go keeps the three in step.
const (
	TypeTemperature = "temperature"
	TypeWifiScan    = "wifi_scan"
	TypeGnss        = "gnss"
	TypeBattery     = "battery"
	TypeReboot      = "reboot"
)

// Rows are the rows a batch of records becomes, in the order they must be
// written (devices first: the others reference it). The JSON tags are the
// column names; no field has omitempty, because PostgREST refuses a bulk
// insert whose objects have different keys (PGRST102,
// docs/pitfalls.md#postgrest-go).
type Rows struct {
	Devices  []DeviceRow
	Configs  []ConfigRow
	Activity []ActivityRow
	Sensors  []SensorRow
}

// DeviceRow upserts devices.last_seen_at (the latest receipt time wins).
type DeviceRow struct {
	DevID      string    `json:"devid"`
	LastSeenAt time.Time `json:"last_seen_at"`
}

// ConfigRow is the configuration a device reported; it replaces the
// stored one unless that one is newer. uint32 values are int64: the
// columns are bigint with a range check.
type ConfigRow struct {
	DevID             string    `json:"devid"`
	HeartbeatInterval *int64    `json:"heartbeat_interval"`
	HwVersion         *string   `json:"hw_version"`
	FwVersion         *string   `json:"fw_version"`
	GnssInterval      *int64    `json:"gnss_interval"`
	WifiScanInterval  *int64    `json:"wifi_scan_interval"`
	ConfigVersion     *int64    `json:"config_version"`
	UpdatedAt         time.Time `json:"updated_at"`
}

// ActivityRow is the one row every uplink makes: its counter and the
// seconds per state (zero when the device sent no activity).
type ActivityRow struct {
	UplinkID    uuid.UUID `json:"uplink_id"`
	DevID       string    `json:"devid"`
	UplinkCount int64     `json:"uplink_count"`
	Sleep       int64     `json:"sleep"`
	Modem       int64     `json:"modem"`
	Gnss        int64     `json:"gnss"`
	Wifi        int64     `json:"wifi"`
	Other       int64     `json:"other"`
	ReceivedAt  time.Time `json:"received_at"`
	// MsgKey is the uplink's Key in hex (nil for uplinks of the version
	// before it): the database keeps one row of the copies that share it.
	MsgKey *string `json:"msg_key"`
}

// SensorRow is one sensor_data row; Data is a JSON object (see sensorRows).
type SensorRow struct {
	UplinkID   uuid.UUID       `json:"uplink_id"`
	DevID      string          `json:"devid"`
	DataType   string          `json:"data_type"`
	Data       json.RawMessage `json:"data"`
	ReceivedAt time.Time       `json:"received_at"`
}

// RowsOf turns records into rows. A record seen twice (same ID) is written
// once; devices and configs are merged per device (latest receipt wins) and
// sorted by device ID, so concurrent batches lock devices rows in the same
// order and an upsert never touches one row twice in a statement.
func RowsOf(recs []uplink.Accepted) Rows {
	var out Rows
	seen := make(map[uuid.UUID]struct{}, len(recs))
	devices := make(map[string]int, len(recs))
	configs := make(map[string]int)
	for _, r := range recs {
		if _, dup := seen[r.ID]; dup {
			continue
		}
		seen[r.ID] = struct{}{}
		at := dbTime(r.ReceivedAt)
		if i, ok := devices[r.DeviceID]; !ok {
			devices[r.DeviceID] = len(out.Devices)
			out.Devices = append(out.Devices, DeviceRow{DevID: r.DeviceID, LastSeenAt: at})
		} else if at.After(out.Devices[i].LastSeenAt) {
			out.Devices[i].LastSeenAt = at
		}
		u := r.Uplink
		if c := u.GetConfig(); c != nil {
			row := configRow(r.DeviceID, at, c)
			if i, ok := configs[r.DeviceID]; !ok {
				configs[r.DeviceID] = len(out.Configs)
				out.Configs = append(out.Configs, row)
			} else if !at.Before(out.Configs[i].UpdatedAt) {
				out.Configs[i] = row
			}
		}
		a := u.GetActivity()
		out.Activity = append(out.Activity, ActivityRow{
			UplinkID: r.ID, DevID: r.DeviceID, UplinkCount: int64(u.GetUplinkCount()),
			Sleep: int64(a.GetSleep()), Modem: int64(a.GetModem()), Gnss: int64(a.GetGnss()),
			Wifi: int64(a.GetWifi()), Other: int64(a.GetOther()), ReceivedAt: at, MsgKey: msgKey(r.Key),
		})
		out.Sensors = appendSensors(out.Sensors, r, at)
	}
	slices.SortFunc(out.Devices, func(a, b DeviceRow) int { return strings.Compare(a.DevID, b.DevID) })
	slices.SortFunc(out.Configs, func(a, b ConfigRow) int { return strings.Compare(a.DevID, b.DevID) })
	// The activity trigger locks each row's device: in one order, so two
	// writers' batches cannot deadlock (REST writes activity in its own
	// transaction, after the devices').
	slices.SortStableFunc(out.Activity, func(a, b ActivityRow) int { return strings.Compare(a.DevID, b.DevID) })
	return out
}

func msgKey(k [16]byte) *string {
	if k == ([16]byte{}) {
		return nil
	}
	s := hex.EncodeToString(k[:])
	return &s
}

// dbTime is t in UTC at Postgres's microsecond precision, so what is
// written compares equal to what is read back.
func dbTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func configRow(devid string, at time.Time, c *nbiotv1.DeviceConfig) ConfigRow {
	return ConfigRow{
		DevID:             devid,
		HeartbeatInterval: bigintOf(c.HeartbeatInterval),
		HwVersion:         nonEmpty(c.GetHwVersion()),
		FwVersion:         nonEmpty(c.GetFwVersion()),
		GnssInterval:      bigintOf(c.GnssInterval),
		WifiScanInterval:  bigintOf(c.WifiScanInterval),
		ConfigVersion:     bigintOf(c.ConfigVersion),
		UpdatedAt:         at,
	}
}

// bigintOf widens an optional uint32 to the *int64 of a bigint column
// (nil stays NULL).
func bigintOf(p *uint32) *int64 {
	if p == nil {
		return nil
	}
	v := int64(*p)
	return &v
}

// nonEmpty maps proto3's "" (not reported) to NULL.
func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// appendSensors adds the sensor_data rows of one uplink. The JSON is built
// by hand: it is the hot path of a batch and cannot fail to encode (a
// non-finite float, which ingest already refuses, becomes null).
//
//	temperature {"celsius":23.5}
//	battery     {"mv":3600}
//	gnss        {"lat":59.3,"lon":18.1,"accuracy_m":5}
//	wifi_scan   {"aps":[{"bssid":"aa:bb:cc:dd:ee:ff","rssi":-60,"channel":6}]}
//	reboot      {"reason":"watchdog","count":3}
func appendSensors(rows []SensorRow, r uplink.Accepted, at time.Time) []SensorRow {
	u := r.Uplink
	add := func(typ string, data []byte) {
		rows = append(rows, SensorRow{UplinkID: r.ID, DevID: r.DeviceID, DataType: typ, Data: data, ReceivedAt: at})
	}
	if u.Temperature != nil {
		add(TypeTemperature, append(appendFloat([]byte(`{"celsius":`), float64(u.GetTemperature()), 32), '}'))
	}
	if u.BatteryMv != nil {
		add(TypeBattery, append(strconv.AppendUint([]byte(`{"mv":`), uint64(u.GetBatteryMv()), 10), '}'))
	}
	if g := u.GetGnss(); g != nil {
		b := appendFloat([]byte(`{"lat":`), g.GetLat(), 64)
		b = appendFloat(append(b, `,"lon":`...), g.GetLon(), 64)
		b = appendFloat(append(b, `,"accuracy_m":`...), float64(g.GetAccuracyM()), 32)
		add(TypeGnss, append(b, '}'))
	}
	if aps := u.GetWifiAps(); len(aps) > 0 {
		b := make([]byte, 0, 16+len(aps)*56)
		b = append(b, `{"aps":[`...)
		for i, ap := range aps {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"bssid":"`...)
			b = appendBSSID(b, ap.GetBssid())
			b = strconv.AppendInt(append(b, `","rssi":`...), int64(ap.GetRssi()), 10)
			b = strconv.AppendUint(append(b, `,"channel":`...), uint64(ap.GetChannel()), 10)
			b = append(b, '}')
		}
		add(TypeWifiScan, append(b, "]}"...))
	}
	if rb := u.GetReboot(); rb != nil {
		b := strconv.AppendQuote([]byte(`{"reason":`), livelog.ReasonName(rb.GetReason()))
		b = strconv.AppendUint(append(b, `,"count":`...), uint64(rb.GetCount()), 10)
		add(TypeReboot, append(b, '}'))
	}
	return rows
}

func appendFloat(b []byte, f float64, bits int) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, bits)
}

// appendBSSID writes a MAC address as "aa:bb:cc:dd:ee:ff" (ingest checks
// it has 6 bytes; any other length is written the same way).
func appendBSSID(b, mac []byte) []byte {
	const hex = "0123456789abcdef"
	for i, c := range mac {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, hex[c>>4], hex[c&15])
	}
	return b
}

// Count is the number of rows, for metrics and benchmarks.
func (r *Rows) Count() int {
	return len(r.Devices) + len(r.Configs) + len(r.Activity) + len(r.Sensors)
}
