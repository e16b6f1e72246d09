package uplink

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// The stream message of an accepted uplink is
//
//	version(1) = 2 | flags(1) | uplink_id(16) | key(16) | received_at unix ns (8, big endian) |
//	len(device)(1) | device | the Uplink protobuf exactly as the device sent it
//
// Version 1, written before uplinks were batched, has no key; Unmarshal
// reads both, so a stream filled by the previous version is still stored.
// The device's own bytes are kept (not re-encoded): the consumer decodes
// them with the same rules the datagram path used.
const (
	version       = 2
	flagAuth      = 1 << 0
	headerLenV1   = 1 + 1 + 16 + 8 + 1
	headerLen     = 1 + 1 + 16 + 16 + 8 + 1
	maxDeviceLen  = 64
	MaxPayloadLen = 65000 // MAX_UPLINK_BYTES' upper bound
	// MaxMessageLen is the longest message AppendMessage writes.
	MaxMessageLen = headerLen + maxDeviceLen + MaxPayloadLen
)

// ErrMessage is returned by Unmarshal for a stream message it cannot read.
var ErrMessage = errors.New("uplink: malformed stream message")

// AppendMessage appends the stream message of a (whose Uplink was decoded
// from payload) to dst.
func AppendMessage(dst []byte, a Accepted, payload []byte) []byte {
	var flags byte
	if a.Authenticated {
		flags |= flagAuth
	}
	dst = append(dst, version, flags)
	dst = append(dst, a.ID[:]...)
	dst = append(dst, a.Key[:]...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(a.ReceivedAt.UnixNano()))
	dst = append(dst, byte(len(a.DeviceID)))
	dst = append(dst, a.DeviceID...)
	return append(dst, payload...)
}

// Unmarshal reads a stream message written by AppendMessage.
func Unmarshal(b []byte) (Accepted, error) {
	var a Accepted
	if len(b) < headerLenV1 || (b[0] != 1 && b[0] != version) || (b[0] == version && len(b) < headerLen) {
		return a, ErrMessage
	}
	a.Authenticated = b[1]&flagAuth != 0
	copy(a.ID[:], b[2:18])
	t := b[18:]
	if b[0] == version {
		copy(a.Key[:], t[:16])
		t = t[16:]
	}
	a.ReceivedAt = time.Unix(0, int64(binary.BigEndian.Uint64(t[:8]))).UTC()
	n := int(t[8])
	rest := t[9:]
	if n > maxDeviceLen || len(rest) < n || len(rest)-n > MaxPayloadLen {
		return a, ErrMessage
	}
	a.DeviceID = string(rest[:n])
	if !livelog.ValidDeviceID(a.DeviceID) || a.ID == uuid.Nil {
		return a, ErrMessage
	}
	a.Uplink = new(nbiotv1.Uplink)
	if err := proto.Unmarshal(rest[n:], a.Uplink); err != nil {
		return a, fmt.Errorf("%w: %v", ErrMessage, err)
	}
	return a, nil
}
