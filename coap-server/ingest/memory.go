package ingest

import "github.com/nbiot-live/nbiot-live/internal/memlimit"

// Shares of ProcessMemory the CoAP side's bounds take by default. Together
// they are under a tenth; the rest is for the stream's buffers, DTLS
// sessions, the hub and the Go runtime.
const (
	// dedupShare: 1/16, 25 MiB at GOMEMLIMIT=400MiB, about 273,000 answers
	// (96 B each without a downlink): 1,100 uplinks/s for a whole
	// EXCHANGE_LIFETIME.
	dedupShare = 16
	// queueShare: 1/64, 6.25 MiB at 400 MiB, ~7,700 uplink datagrams
	// (848 B each as queued: lean.go; DefaultLeanQueueLen caps the count
	// at 8,192): a fraction of a second of the most a 2-core machine answers.
	queueShare = 64
)

// ProcessMemory is the memory the process may use, in bytes
// (memlimit.Bytes: GOMEMLIMIT, else four fifths of the cgroup limit, else 512 MiB).
func ProcessMemory() int64 { return memlimit.Bytes() }

// DefaultDedupBytes bounds Dedup: a sixteenth of ProcessMemory.
func DefaultDedupBytes() int64 { return ProcessMemory() / dedupShare }

// DefaultQueueBytes bounds the lean path's queue of datagrams: a
// sixty-fourth of ProcessMemory.
func DefaultQueueBytes() int64 { return ProcessMemory() / queueShare }
