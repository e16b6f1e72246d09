// Package downlink delivers configuration queued in device_downlinks in the
// answer to a device's next uplink. Pending downlinks are held in memory per
// device (bounded) so the answer never waits on the database; they are
// loaded at start and refreshed by LISTEN/NOTIFY (Postgres) or polling
// (Supabase REST). sent_at and applied_at are stamped asynchronously.
//
// Semantics, per device:
//   - The newest row that is neither applied nor superseded is pending.
//     Sending it stamps its sent_at (once) and superseded_at on every older
//     row of the device that was not applied: they will never be sent.
//   - The pending configuration is sent in the 2.04 of every uplink until an
//     uplink reports its config_version (= the row id). A 2.04 can be lost
//     (NB-IoT drops datagrams; a retransmitted CON only replays the cached
//     answer), so "sent" is not "received": resending until the device
//     echoes the version is the only proof of delivery.
//   - An uplink reporting the pending version stamps applied_at and ends the
//     resending; later uplinks still say whether they report that version
//     (config_applied on the live log).
package downlink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/nbiot-live/nbiot-live/internal/clip"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// ErrConfig: a queued config cannot become a DeviceConfig.
var ErrConfig = errors.New("downlink: invalid config")

// maxConfigJSON bounds the jsonb config accepted; a DeviceConfig encodes to
// a few dozen bytes.
const maxConfigJSON = 4096

// ConfigFromJSON converts a device_downlinks.config object into the
// DeviceConfig sent to the device, with config_version =
// livelog.ConfigVersion(version) (the row id below 2^32, which the device
// echoes once applied). Unknown keys are refused, so a
// typo in the frontend fails loudly instead of silently doing nothing.
// A config_version in the object is ignored: the server owns it.
func ConfigFromJSON(raw []byte, version int64) (*nbiotv1.DeviceConfig, error) {
	if len(raw) > maxConfigJSON {
		return nil, fmt.Errorf("%w: over %d bytes", ErrConfig, maxConfigJSON)
	}
	if version < 1 {
		return nil, fmt.Errorf("%w: id %d is not a row id", ErrConfig, version)
	}
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&fields); err != nil || fields == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrConfig)
	}
	// More() is false before a stray '}' or ']', so ask for the next token:
	// only the end of input may follow the object.
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data", ErrConfig)
	}
	c := &nbiotv1.DeviceConfig{}
	v := livelog.ConfigVersion(version)
	c.ConfigVersion = &v
	set := 0
	for key, val := range fields {
		var err error
		switch key {
		case "heartbeat_interval":
			c.HeartbeatInterval, err = uint32Field(key, val)
		case "gnss_interval":
			c.GnssInterval, err = uint32Field(key, val)
		case "wifi_scan_interval":
			c.WifiScanInterval, err = uint32Field(key, val)
		case "hw_version":
			c.HwVersion, err = stringField(key, val)
		case "fw_version":
			c.FwVersion, err = stringField(key, val)
		case "config_version":
			continue
		default:
			return nil, fmt.Errorf("%w: unknown key %q", ErrConfig, clip.String(key, 32))
		}
		if err != nil {
			return nil, err
		}
		set++
	}
	if set == 0 {
		return nil, fmt.Errorf("%w: no setting", ErrConfig)
	}
	return c, nil
}

func uint32Field(key string, raw json.RawMessage) (*uint32, error) {
	var n json.Number
	// json.Number also accepts a quoted number; the frontend must send one.
	if len(raw) == 0 || raw[0] == '"' || json.Unmarshal(raw, &n) != nil {
		return nil, fmt.Errorf("%w: %s must be a number", ErrConfig, key)
	}
	i, err := n.Int64()
	if err != nil || i < 0 || i > math.MaxUint32 {
		return nil, fmt.Errorf("%w: %s must be an integer from 0 to 4294967295", ErrConfig, key)
	}
	v := uint32(i)
	return &v, nil
}

// stringField takes hw_version/fw_version under the same bounds as an
// uplink's (ingest: 64 bytes, no NUL).
func stringField(key string, raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%w: %s must be a string", ErrConfig, key)
	}
	if len(s) > 64 || strings.IndexByte(s, 0) >= 0 {
		return "", fmt.Errorf("%w: %s longer than 64 bytes or contains NUL", ErrConfig, key)
	}
	return s, nil
}
