package storage

import "errors"

// Sentinel errors of the storage pipeline.
var (
	// ErrRejected wraps a writer's error when the database refused the rows
	// for good (a constraint or data error, not an outage): retrying the
	// same rows cannot succeed, so the consumer splits the batch to find and
	// skip the offending uplink.
	ErrRejected = errors.New("storage: rows rejected by the database")
)
