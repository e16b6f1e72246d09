package dtls

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// An unknown identity costs at most what negativeEntryBytes charges, the
// longest identity (64 bytes) included, so DefaultMaxNegative's share of
// memory holds them.
func TestNegativeEntryBytesCoverAnUnknownIdentity(t *testing.T) {
	const n = 20000
	k := NewKeyCache(nil, KeyCacheConfig{MaxNegative: n}, NewMetrics(prometheus.NewRegistry()), nil)
	now := time.Unix(1e9, 0)
	pad := strings.Repeat("X", 64-8)
	before := liveHeap()
	for i := range n {
		k.markUnknown(fmt.Sprintf("%s%08d", pad, i), now)
	}
	per := (liveHeap() - before) / n
	t.Logf("%d B per unknown identity of 64 bytes", per)
	if per > negativeEntryBytes {
		t.Errorf("an unknown identity holds %d B, negativeEntryBytes charges %d", per, negativeEntryBytes)
	}
	if got := len(k.unknown); got != n {
		t.Fatalf("%d unknown identities held, want %d", got, n)
	}
	runtime.KeepAlive(k)
}

func TestDefaultMaxNegativeFollowsMemory(t *testing.T) {
	for _, c := range []struct {
		memory int64
		want   int
	}{
		{400 << 20, 8533},
		{4 << 30, 87381},
		{16 << 20, 1024}, // the floor
	} {
		if got := DefaultMaxNegative(c.memory); got != c.want {
			t.Errorf("DefaultMaxNegative(%d) = %d, want %d", c.memory, got, c.want)
		}
	}
}

// liveHeap is the live heap after two collections.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
