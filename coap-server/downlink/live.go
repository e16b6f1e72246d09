package downlink

import (
	"strconv"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Downlink lifecycle states, in order, as the live log shows them.
const (
	StateQueued  = "queued"  // the service learned of the pending row
	StateSent    = "sent"    // put in the answer to an uplink (every uplink until applied)
	StateApplied = "applied" // an uplink reported its config_version
)

// LiveData is the data of a downlink entry. Every state of one downlink
// carries the same downlink_id (the device_downlinks row id, which is also
// the config_version sent), so a client updates one row in place.
type LiveData struct {
	DownlinkID    int64           `json:"downlink_id"`
	State         string          `json:"state"`
	ConfigVersion uint32          `json:"config_version"`
	Config        *livelog.Config `json:"config"`
}

// liveEntry builds the downlink entry of row id for deviceID in state.
func liveEntry(deviceID string, id int64, state string, cfg *livelog.Config, at time.Time) *livelog.Entry {
	v := "v" + strconv.FormatInt(id, 10)
	var msg string
	switch state {
	case StateQueued:
		msg = "Configuration " + v + " queued"
	case StateApplied:
		msg = "Configuration " + v + " applied"
	default:
		msg = "Sent configuration " + v
	}
	return &livelog.Entry{
		DeviceID:  deviceID,
		Timestamp: livelog.Timestamp(at),
		Type:      livelog.TypeDownlink,
		Message:   msg,
		Data:      &LiveData{DownlinkID: id, State: state, ConfigVersion: uint32(id), Config: cfg},
	}
}
