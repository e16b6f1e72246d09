// Package memlimit says how much memory the process may use, so that every
// bound on what outside parties can make it hold is a share of that figure
// (the deployed machine has 512 MB; fly.toml sets GOMEMLIMIT=400MiB).
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

// cgroupFiles are where Linux states a memory limit: cgroup v2, then v1.
var cgroupFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// Process is the memory the process may use, in bytes, and where that
// figure came from: "GOMEMLIMIT" when set, else "cgroup", else
// "reference" (Reference). It is read once.
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
			return v, "cgroup"
		}
	}
	return Reference, "reference"
}
