package livelog

import (
	"strconv"
	"time"
)

// Downlink lifecycle states, in order, as the live log shows them
// (docs/contract.md).
const (
	DownlinkQueued  = "queued"  // coap-server learned of the pending row
	DownlinkSent    = "sent"    // put in the answer to an uplink (every uplink until applied)
	DownlinkApplied = "applied" // an uplink reported its config_version
)

// DownlinkData is the data of a downlink entry. Every state of one
// downlink carries the same downlink_id (the device_downlinks row id,
// which is also the config_version sent), so a client updates one row in
// place.
type DownlinkData struct {
	DownlinkID    int64   `json:"downlink_id"`
	State         string  `json:"state"`
	ConfigVersion uint32  `json:"config_version"`
	Config        *Config `json:"config"`
}

// Downlink builds the entry of downlink id (a device_downlinks row) for
// deviceID in state, at the time at.
func Downlink(deviceID string, at time.Time, id int64, state string, cfg *Config) *Entry {
	v := "v" + strconv.FormatInt(id, 10)
	var msg string
	switch state {
	case DownlinkQueued:
		msg = "Configuration " + v + " queued"
	case DownlinkApplied:
		msg = "Configuration " + v + " applied"
	default:
		msg = "Sent configuration " + v
	}
	return &Entry{
		DeviceID:  deviceID,
		Timestamp: Timestamp(at),
		Type:      TypeDownlink,
		Message:   msg,
		Data:      &DownlinkData{DownlinkID: id, State: state, ConfigVersion: uint32(id), Config: cfg},
	}
}
