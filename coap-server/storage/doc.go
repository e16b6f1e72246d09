// Package storage writes accepted uplinks to the database: the consumer of
// the durable uplink stream (batches fetched from JetStream, written in one
// round trip, acknowledged only after the database committed) in front of a
// database writer. The writers themselves live in the sub-packages postgres
// (pgx) and rest (Supabase PostgREST).
package storage
