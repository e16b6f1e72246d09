// Package ingest is coap-server's CoAP side: it decodes POST /uplink,
// validates it, hands the accepted uplink to storage and the live log, and
// answers at once. Nothing slow runs on this path: an uplink holds one of
// the lean path's workers (lean.go) until it is answered, and CoAPS runs on
// go-coap's DTLS server, whose handlers a slow one stalls
// (docs/pitfalls.md#go-coap).
package ingest

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/internal/clip"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// Reasons an uplink is rejected. The handler maps them to CoAP codes.
var (
	ErrTooLarge    = errors.New("payload over the limit")                   // 4.13
	ErrUndecodable = errors.New("undecodable payload")                      // 4.00
	ErrDeviceID    = errors.New("invalid device ID")                        // 4.00
	ErrIdentity    = errors.New("device_id differs from the DTLS identity") // 4.03
	ErrInvalid     = errors.New("invalid field")                            // 4.00, device known
	// ErrUnauthorized: the device has DTLS credentials and spoke plain CoAP.
	ErrUnauthorized = errors.New("this device has DTLS credentials: send over CoAPS") // 4.01
	// ErrUnregistered: AUTO_REGISTER is off and the device has no devices row.
	ErrUnregistered = errors.New("unknown device: not registered") // 4.03
	// errCredentialsUnknown: the list of such devices is not loaded yet.
	errCredentialsUnknown = errors.New("credentialed devices not known yet")
	// errRegisteredUnknown: the list of registered devices is not loaded yet.
	errRegisteredUnknown = errors.New("registered devices not known yet")
	// errDedupFull: a strict Dedup holds its bound of recent answers.
	errDedupFull = errors.New("recent uplinks at their memory bound")
)

// maxVersionLen bounds hw_version and fw_version, which land in text columns.
const maxVersionLen = 64

// Decode parses payload into u and returns the device ID the uplink belongs
// to. identity is the DTLS PSK identity, or "" on plain CoAP: when set, it
// names the device and an uplink naming another one is refused. The returned
// device ID is valid whenever err is nil or wraps ErrIdentity or ErrInvalid,
// so the rejection can be shown on that device's live log.
func Decode(payload []byte, identity string, u *nbiotv1.Uplink) (string, error) {
	if err := proto.Unmarshal(payload, u); err != nil {
		return "", ErrUndecodable
	}
	id := u.GetDeviceId()
	switch {
	case identity != "" && id == "":
		id = identity
	case identity != "" && id != identity:
		return identity, fmt.Errorf("%w: %q", ErrIdentity, clip.String(id, 64))
	}
	if !livelog.ValidDeviceID(id) {
		return "", ErrDeviceID
	}
	if err := validate(u); err != nil {
		return id, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return id, nil
}

// validate checks what the schema cannot say but the live log (JSON has no
// NaN) and the database (text has no NUL, bssid is 6 bytes) need.
func validate(u *nbiotv1.Uplink) error {
	if u.Temperature != nil && !finite(float64(u.GetTemperature())) {
		return errors.New("temperature is not a finite number")
	}
	for i, ap := range u.GetWifiAps() {
		if len(ap.GetBssid()) != 6 {
			return fmt.Errorf("wifi_aps[%d].bssid has %d bytes, want 6", i, len(ap.GetBssid()))
		}
	}
	if g := u.GetGnss(); g != nil {
		if !finite(g.GetLat()) || math.Abs(g.GetLat()) > 90 || !finite(g.GetLon()) || math.Abs(g.GetLon()) > 180 {
			return errors.New("gnss position out of range")
		}
		if !finite(float64(g.GetAccuracyM())) || g.GetAccuracyM() < 0 {
			return errors.New("gnss accuracy_m is not a finite positive number")
		}
	}
	if c := u.GetConfig(); c != nil {
		if err := checkVersion("hw_version", c.GetHwVersion()); err != nil {
			return err
		}
		if err := checkVersion("fw_version", c.GetFwVersion()); err != nil {
			return err
		}
	}
	return nil
}

func checkVersion(name, v string) error {
	if len(v) > maxVersionLen || strings.IndexByte(v, 0) >= 0 {
		return fmt.Errorf("config.%s longer than %d bytes or contains NUL", name, maxVersionLen)
	}
	return nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
