package sim

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Key is one device's DTLS pre-shared key; the PSK identity is the device ID.
type Key struct {
	DeviceID string
	PSK      []byte
}

// Limits of a key file: it comes from an operator, but it is still input.
const (
	MaxKeys     = MaxDevices
	MaxKeyBytes = 64 // RFC 4279 §5.3 allows up to 64 KiB; real device PSKs are 16–32 bytes
	maxKeyFile  = 1 << 20
)

// ErrKeyFile is wrapped by every ParseKeys error.
var ErrKeyFile = errors.New("dtls key file")

// ParseKeys reads a key file: one device per line, "DEVICE_ID HEXKEY" (space,
// tab or '=' between), '#' starts a comment. This is the device ID and the
// hex PSK that `go run ./scripts/provision` prints. Errors give the line
// number but never the key.
func ParseKeys(r io.Reader) ([]Key, error) {
	sc := bufio.NewScanner(io.LimitReader(r, maxKeyFile+1))
	sc.Buffer(make([]byte, 0, 4096), 4096)
	var keys []Key
	seen := make(map[string]bool)
	read := 0
	for line := 1; sc.Scan(); line++ {
		read += len(sc.Bytes()) + 1
		if read > maxKeyFile {
			return nil, fmt.Errorf("%w: larger than %d bytes", ErrKeyFile, maxKeyFile)
		}
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		fields := strings.FieldsFunc(text, func(r rune) bool { return r == ' ' || r == '\t' || r == '=' || r == '\r' })
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return nil, fmt.Errorf("%w: line %d: want DEVICE_ID HEXKEY", ErrKeyFile, line)
		}
		id := fields[0]
		if !livelog.ValidDeviceID(id) {
			return nil, fmt.Errorf("%w: line %d: invalid device ID", ErrKeyFile, line)
		}
		psk, err := hex.DecodeString(strings.TrimPrefix(fields[1], "0x"))
		if err != nil || len(psk) == 0 || len(psk) > MaxKeyBytes {
			return nil, fmt.Errorf("%w: line %d: key must be 1–%d bytes of hex", ErrKeyFile, line, MaxKeyBytes)
		}
		if seen[id] {
			return nil, fmt.Errorf("%w: line %d: device %s listed twice", ErrKeyFile, line, id)
		}
		if len(keys) == MaxKeys {
			return nil, fmt.Errorf("%w: more than %d devices", ErrKeyFile, MaxKeys)
		}
		seen[id] = true
		keys = append(keys, Key{DeviceID: id, PSK: psk})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%w: a line is longer than 4096 bytes", ErrKeyFile)
		}
		return nil, fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no keys", ErrKeyFile)
	}
	return keys, nil
}
