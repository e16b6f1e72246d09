// Package memlimit says how much memory the process may use, so that every
// bound on what outside parties can make it hold is a share of that figure
// (the deployed machine has 512 MB; fly.toml sets GOMEMLIMIT=400MiB), and
// gives that figure to the Go runtime as its soft memory limit when only a
// cgroup states it (Apply).
package memlimit

import (
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
)

// Reference is the memory assumed when neither GOMEMLIMIT nor a cgroup
// limit says otherwise: the 512 MB machine of fly.toml (536870912 bytes).
const Reference int64 = 512 << 20

// cgroupShare is the part of a cgroup's limit the process takes when
// GOMEMLIMIT is unset, four fifths: the rest is headroom for what the
// runtime's limit does not hold back (the kernel's and the runtime's own
// overheads), as fly.toml leaves 112 MB of its 512 MB machine by setting
// 400 MiB.
func cgroupShare(v int64) int64 { return v / 5 * 4 }

// cgroupFiles are where Linux states a memory limit: cgroup v2, then v1.
var cgroupFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// Process is the memory the process may use, in bytes, and where that
// figure came from: "GOMEMLIMIT" when set, else "cgroup" (cgroupShare of
// the container's limit), else "reference" (Reference). It is read once.
func Process() (int64, string) { p := process(); return p.bytes, p.from }

// Bytes is Process without its source.
func Bytes() int64 { return process().bytes }

type limit struct {
	bytes int64
	from  string
}

var process = sync.OnceValue(func() limit {
	b, from := read(debug.SetMemoryLimit(-1), cgroupFiles)
	return limit{b, from}
})

func read(goMemLimit int64, files []string) (int64, string) {
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
			return cgroupShare(v), "cgroup"
		}
	}
	return Reference, "reference"
}

// Apply gives the Go runtime Process as its soft memory limit when the
// figure came from a cgroup: a container without GOMEMLIMIT then collects
// before the kernel's OOM killer acts, as one with it does. GOMEMLIMIT set
// is the runtime's already; the reference figure is not a limit the
// machine has, so it is left to the bounds alone. It returns Process.
func Apply() (int64, string) {
	return apply(process(), func(b int64) { debug.SetMemoryLimit(b) })
}

func apply(p limit, set func(int64)) (int64, string) {
	if p.from == "cgroup" {
		set(p.bytes)
	}
	return p.bytes, p.from
}
