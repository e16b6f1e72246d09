// Package storage defines what coap-server stores per accepted uplink and the
// bounded, batching, retrying queue in front of a database writer. The
// writers themselves live in the sub-packages postgres (pgx) and rest
// (Supabase PostgREST).
package storage

import (
	"time"

	"github.com/google/uuid"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// Record is one accepted uplink. ID is assigned once, when the uplink is
// accepted, and every row written for it carries it: a retried write hits
// the unique constraints instead of making a second row.
type Record struct {
	ID         uuid.UUID
	DeviceID   string
	ReceivedAt time.Time
	Uplink     *nbiotv1.Uplink
}
