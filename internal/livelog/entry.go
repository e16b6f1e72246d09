// Package livelog defines the live-log entry: the JSON text frame that
// coap-server broadcasts on /ws and the relay forwards on /device-logs. The
// frontend parses it, so its shape is part of the public contract: keys are
// only ever added, never renamed or removed.
package livelog

import (
	"encoding/json"
	"errors"
	"time"
)

// Entry types.
const (
	TypeUplink   = "uplink"
	TypeDownlink = "downlink"
	TypeError    = "error"  // a rejected uplink whose device ID is known
	TypeStatus   = "status" // relay state: upstream lost or restored
)

// TimeFormat is RFC 3339 with milliseconds, always in UTC ("Z").
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// Entry is one live-log message. Data is marshalled as is; for uplinks it is
// an *UplinkData so that its five fixed keys are always present.
type Entry struct {
	DeviceID  string    `json:"deviceId"`
	Timestamp Timestamp `json:"timestamp"`
	Type      string    `json:"type"`
	Message   string    `json:"message"`
	Data      any       `json:"data"`
}

// Timestamp marshals as UTC RFC 3339 with milliseconds.
type Timestamp time.Time

// MarshalJSON implements json.Marshaler.
func (t Timestamp) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, len(TimeFormat)+2)
	b = append(b, '"')
	b = time.Time(t).UTC().AppendFormat(b, TimeFormat)
	return append(b, '"'), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (t *Timestamp) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	*t = Timestamp(v)
	return nil
}

// Marshal encodes e as the bytes of one text frame.
func (e *Entry) Marshal() ([]byte, error) {
	if b, ok := appendEntry(make([]byte, 0, 512), e); ok {
		return b, nil
	}
	return json.Marshal(e)
}

// AppendMarshal appends what Marshal returns to b: the publisher of every
// accepted uplink's entry encodes it into a buffer it reuses.
func (e *Entry) AppendMarshal(b []byte) ([]byte, error) {
	if out, ok := appendEntry(b, e); ok {
		return out, nil
	}
	j, err := json.Marshal(e)
	if err != nil {
		return b, err
	}
	return append(b, j...), nil
}

// ErrNoDeviceID is returned by PeekDeviceID for a frame without a deviceId.
var ErrNoDeviceID = errors.New("livelog: frame has no deviceId")

// PeekDeviceID returns the deviceId of an encoded entry without decoding the
// rest: the relay uses it to drop frames for devices a watcher did not ask for.
func PeekDeviceID(frame []byte) (string, error) {
	var head struct {
		DeviceID string `json:"deviceId"`
	}
	if err := json.Unmarshal(frame, &head); err != nil {
		return "", err
	}
	if head.DeviceID == "" {
		return "", ErrNoDeviceID
	}
	return head.DeviceID, nil
}

// Status builds a status entry (relay state) for a device.
func Status(deviceID string, now time.Time, message string, data any) *Entry {
	return &Entry{DeviceID: deviceID, Timestamp: Timestamp(now), Type: TypeStatus, Message: message, Data: data}
}

// Error builds an error entry for a rejected uplink whose device is known.
func Error(deviceID string, now time.Time, message string) *Entry {
	return &Entry{DeviceID: deviceID, Timestamp: Timestamp(now), Type: TypeError, Message: message, Data: nil}
}
