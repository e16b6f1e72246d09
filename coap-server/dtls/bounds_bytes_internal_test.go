package dtls

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/memtest"
)

// An unknown identity costs at most what negativeEntryBytes charges, the
// longest identity (64 bytes) included, so DefaultMaxNegative's share of
// memory holds them.
func TestNegativeEntryBytesCoverAnUnknownIdentity(t *testing.T) {
	const n = 20000
	k := NewKeyCache(nil, KeyCacheConfig{MaxNegative: n}, NewMetrics(prometheus.NewRegistry()), nil)
	now := time.Unix(1e9, 0)
	pad := strings.Repeat("X", 64-8)
	memtest.Charged(t, "unknown identity of 64 bytes", negativeEntryBytes, n, func(i int) {
		k.markUnknown(fmt.Sprintf("%s%08d", pad, i), now)
	})
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

// A source IP in the limiter's table costs at most what ipEntryBytes
// charges, so DefaultMaxIPs' share of memory holds them.
func TestIPEntryBytesCoverASourceIP(t *testing.T) {
	const n = 20000
	now := time.Unix(1e9, 0)
	l := NewLimiter(LimitConfig{MaxIPs: n, Now: func() time.Time { return now }})
	memtest.Charged(t, "source IP", ipEntryBytes, n, func(i int) {
		ip := net.ParseIP("2001:db8::") // a /64 each: the longest key
		ip[5], ip[6], ip[7] = byte(i>>16), byte(i>>8), byte(i)
		a := &net.UDPAddr{IP: ip, Port: 5684}
		if err := l.Acquire(a); err != nil {
			t.Fatal(err)
		}
		l.Release(a)
	})
	if got := len(l.ips); got != n {
		t.Fatalf("%d source IPs held, want %d", got, n)
	}
	runtime.KeepAlive(l)
}

func TestDefaultMaxIPsFollowsMemory(t *testing.T) {
	for memory, want := range map[int64]int{400 << 20: 12800, 4 << 30: 131072, 16 << 20: 1024} {
		if got := DefaultMaxIPs(memory); got != want {
			t.Errorf("DefaultMaxIPs(%d) = %d, want %d", memory, got, want)
		}
	}
}
