package storage

import "errors"

// Sentinel errors of the storage pipeline.
var (
	// ErrQueueFull is returned by Enqueue when the queue holds its limit;
	// the CoAP side answers 5.03 with Max-Age so the device retries later.
	ErrQueueFull = errors.New("storage: queue full")
	// ErrClosed is returned by Enqueue after Close.
	ErrClosed = errors.New("storage: queue closed")
	// ErrRejected wraps a writer's error when the database refused the rows
	// for good (a constraint or data error, not an outage): retrying the
	// same rows cannot succeed, so the queue splits the batch to find and
	// skip the offending uplink.
	ErrRejected = errors.New("storage: rows rejected by the database")
)
