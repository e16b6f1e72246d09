package ingest

import "github.com/nbiot-live/nbiot-live/internal/memlimit"

// Shares of ProcessMemory the CoAP side's bounds take by default. With
// NATS_URL they are under a tenth; with the embedded server Dedup takes
// the quarter the server's message IDs took before it (it holds them
// instead), so a third. The rest is for the stream's buffers, DTLS
// sessions, the hub and the Go runtime.
const (
	// dedupShare: 1/16, 25 MiB at GOMEMLIMIT=400MiB, about 273,000 answers
	// (96 B each without a downlink): 1,100 uplinks/s for a whole
	// EXCHANGE_LIFETIME.
	dedupShare = 16
	// embeddedDedupShare: 5/16, 125 MiB at 400 MiB, about 1,365,000
	// answers: 5,500 uplinks/s for a whole EXCHANGE_LIFETIME, strict
	// (4,800/s of plain CoAP: an eighth is for CoAPS, authReserveShare).
	embeddedDedupShare = 5
	// queueShare: 1/64, 6.25 MiB at 400 MiB, ~7,700 uplink datagrams
	// (848 B each as queued: lean.go; DefaultLeanQueueLen caps the count
	// at 8,192): a fraction of a second of the most a 2-core machine answers.
	queueShare = 64
	// refusalShare: 1/256, 1.6 MiB at 400 MiB, about 16,000 refused
	// requests remembered (their keys only), so that a retransmission of
	// one logs no second error entry; oldest first when full.
	refusalShare = 256
)

// ProcessMemory is the memory the process may use, in bytes
// (memlimit.Bytes: GOMEMLIMIT, else four fifths of the cgroup limit, else 512 MiB).
func ProcessMemory() int64 { return memlimit.Bytes() }

// DefaultDedupBytes bounds Dedup: a sixteenth of ProcessMemory.
func DefaultDedupBytes() int64 { return ProcessMemory() / dedupShare }

// EmbeddedDedupBytes bounds the strict Dedup of an embedded server: five
// sixteenths of ProcessMemory.
func EmbeddedDedupBytes() int64 { return ProcessMemory() / 16 * embeddedDedupShare }

// DefaultRefusalBytes bounds the refusals a Handler remembers: a 256th
// of ProcessMemory.
func DefaultRefusalBytes() int64 { return ProcessMemory() / refusalShare }

// DefaultQueueBytes bounds the lean path's queue of datagrams: a
// sixty-fourth of ProcessMemory.
func DefaultQueueBytes() int64 { return ProcessMemory() / queueShare }
