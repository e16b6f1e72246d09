// Package uplink holds the accepted uplink, the one domain type that the
// datagram path (ingest), the durable stream (stream), storage and downlinks
// share, and its encoding as a stream message.
package uplink

import (
	"time"

	"github.com/google/uuid"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// Accepted is one accepted uplink. ID is assigned once, when the uplink is
// accepted, and travels with it through the stream: every row written for
// it carries it, so a retried or redelivered write hits the unique
// constraints instead of making a second row.
type Accepted struct {
	ID         uuid.UUID
	DeviceID   string // from the payload, or the DTLS identity
	ReceivedAt time.Time
	Uplink     *nbiotv1.Uplink
	// Authenticated is true when the uplink came over DTLS with the device's
	// own key (the PSK identity names DeviceID).
	Authenticated bool
	// Key is what a CoAP retransmission repeats, hashed (stream.MsgKey:
	// device, message ID, token, payload). Copies of one uplink that two
	// instances, or one before and after a restart, accepted under two IDs
	// share it; the database keeps the first (the activity trigger of
	// supabase/migrations/20261202120000_retransmission_dedup.sql). Zero
	// for uplinks of an older version, which the stream deduplicated.
	Key [16]byte
}
