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
// downlink carries the same downlink_id (the device_downlinks row id;
// the config_version sent is ConfigVersion of it, the id itself below
// 2^32), so a client updates one row in place.
type DownlinkData struct {
	DownlinkID    int64   `json:"downlink_id"`
	State         string  `json:"state"`
	ConfigVersion uint32  `json:"config_version"`
	Config        *Config `json:"config"`
}

// ConfigVersion is the config_version sent with downlink id (a
// device_downlinks row id, from 1), which the device echoes once it
// applied it: the id itself while it fits a uint32, then the ids counted
// again from 1 (0 is never one: a device that was never configured may
// report it). The ids come from one sequence for every tenant, and a
// failed insert uses its ids too, so a user could otherwise make every
// later downlink unsendable by pushing the sequence past 2^32 with
// inserts that fail; a device sees at most a handful of downlinks, not
// 2^32 − 1 between two of its own.
func ConfigVersion(id int64) uint32 {
	if id < 1 {
		return 0
	}
	return uint32((id-1)%(1<<32-1)) + 1
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
		Data:      &DownlinkData{DownlinkID: id, State: state, ConfigVersion: ConfigVersion(id), Config: cfg},
	}
}
