package ingest

import (
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
)

// ReferenceMemory is the machine's memory when neither GOMEMLIMIT nor a
// cgroup limit says otherwise: the 512 MB VM of fly.toml.
const ReferenceMemory int64 = 512 << 20

// Shares of ProcessMemory the CoAP side's bounds take by default. Together
// they are under a tenth; the rest is for the stream's buffers, DTLS
// sessions, the hub and the Go runtime.
const (
	// dedupShare: 1/16, 25 MiB at GOMEMLIMIT=400MiB, about 85,000 answers
	// (~300 B each), 345 uplinks/s for a whole EXCHANGE_LIFETIME.
	dedupShare = 16
	// queueShare: 1/64, 6.25 MiB at 400 MiB, ~50,000 uplink datagrams:
	// seconds of the most a 2-core machine answers.
	queueShare = 64
)

// ProcessMemory is the memory the process may use, in bytes: the Go
// runtime's soft limit (GOMEMLIMIT) when set, else the cgroup v2 limit
// (memory.max), else ReferenceMemory.
func ProcessMemory() int64 { return processMemory() }

var processMemory = sync.OnceValue(func() int64 {
	if limit := debug.SetMemoryLimit(-1); limit > 0 && limit < math.MaxInt64 {
		return limit
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 {
			return v
		}
	}
	return ReferenceMemory
})

// DefaultDedupBytes bounds Dedup: a sixteenth of ProcessMemory.
func DefaultDedupBytes() int64 { return ProcessMemory() / dedupShare }

// DefaultQueueBytes bounds the lean path's queue of datagrams: a
// sixty-fourth of ProcessMemory.
func DefaultQueueBytes() int64 { return ProcessMemory() / queueShare }
