package access

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/memtest"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

type allowAll struct{}

func (allowAll) Check(context.Context, *auth.Claims, string, string) error { return nil }

// A cached answer costs at most what EntryBytes charges (a Supabase user
// ID and a device ID of the longest), so DefaultMaxEntries' share of
// memory holds them.
func TestEntryBytesCoverACachedAnswer(t *testing.T) {
	const n = 20000
	c := NewCached(allowAll{}, CacheConfig{MaxEntries: n}, NewMetrics(prometheus.NewRegistry()))
	memtest.Charged(t, "cached answer", EntryBytes, n, func(i int) {
		cl := &auth.Claims{Subject: fmt.Sprintf("%08d-1111-2222-3333-444455556666", i), Role: auth.AuthenticatedRole}
		if err := c.Check(context.Background(), cl, "token", fmt.Sprintf("%064d", i)); err != nil {
			t.Fatal(err)
		}
	})
	if c.Len() != n {
		t.Fatalf("%d answers cached, want %d", c.Len(), n)
	}
	runtime.KeepAlive(c)
}

func TestDefaultMaxEntriesFollowsMemory(t *testing.T) {
	for memory, want := range map[int64]int{400 << 20: 10240, 4 << 30: 104857, 16 << 20: 1024} {
		if got := DefaultMaxEntries(memory); got != want {
			t.Errorf("DefaultMaxEntries(%d) = %d, want %d", memory, got, want)
		}
	}
}
