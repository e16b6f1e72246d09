package dtls

import (
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

const (
	// SessionBytes is what one established session costs, measured: 47 KiB
	// (48128 bytes) of heap (pion's conn, go-coap's client, buffers).
	SessionBytes = 47 << 10
	// A peer before it echoes its cookie costs nothing held: the
	// HelloVerifyRequest is stateless (cookie.go), measured at 0 bytes a
	// spoofed hello within noise (BenchmarkSpoofedHelloMemory; it was
	// 43 KiB when pion kept a conn per hello). Admitted handshakes are
	// bounded by LimitConfig.InFlight and become sessions.
	// ReferenceMemory is the memory assumed when neither GOMEMLIMIT nor a
	// cgroup limit says otherwise: the 512 MB machine of fly.toml
	// (536870912 bytes).
	ReferenceMemory = 512 << 20
	// sessionShare is the part of memory sessions may take; the rest is for
	// the stream, the hub, handshakes and GC headroom.
	sessionShare = 2
)

// cgroupLimitFiles are where Linux states a memory limit: cgroup v2, then v1.
var cgroupLimitFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// MemoryLimit is the memory the process may use, in bytes, and where that
// figure came from: GOMEMLIMIT when set, else the cgroup limit, else
// ReferenceMemory.
func MemoryLimit() (int64, string) {
	return memoryLimit(debug.SetMemoryLimit(-1), cgroupLimitFiles)
}

func memoryLimit(goMemLimit int64, files []string) (int64, string) {
	if goMemLimit > 0 && goMemLimit < math.MaxInt64 {
		return goMemLimit, "GOMEMLIMIT"
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		// "max" (v2) or a huge number (v1) means no limit.
		if err == nil && v > 0 && v < 1<<50 {
			return v, "cgroup"
		}
	}
	return ReferenceMemory, "reference"
}

// SessionsFor is how many sessions fit in half of limit bytes: 5577 for
// the 512 MiB reference machine.
func SessionsFor(limit int64) int {
	return int(max(limit/sessionShare/SessionBytes, 1))
}
