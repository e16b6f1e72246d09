package browser

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/memtest"
)

// keyAddr is the i-th of many client addresses, each its own /64.
func keyAddr(i int) string { return fmt.Sprintf("2001:db8:%x:%x::", i>>16, i&0xffff) }

// An address that once watched MAX_DEVICES_PER_IP devices and keeps one
// connection open holds about what one device costs, not what a hundred
// did: a Go map keeps its buckets when entries leave (3,730 B per such
// address before shrink, measured with this test).
func TestClosedConnectionsLetGoOfTheirDevices(t *testing.T) {
	now := time.Unix(1e9, 0)
	q := newQuota(Quotas{MaxKeys: 1 << 30}, func() time.Time { return now })
	const addrs = 5000
	device := func(d int) string { return fmt.Sprintf("DEV%013d", d) }
	per := memtest.BytesPer(addrs, func(i int) {
		for d := range 100 {
			if r := q.acquire("", keyAddr(i), device(d)); r != "" {
				t.Fatalf("acquire: %s", r)
			}
		}
		for d := range 99 {
			q.release("", keyAddr(i), device(d))
		}
	})
	t.Logf("%d B per address with one connection left", per)
	if per > 1500 {
		t.Errorf("an address with one open connection holds %d B, want at most 1500", per)
	}
	// What is left still counts: the last device's connection, then none.
	e := q.ips.m[keyAddr(0)]
	if e.conns != 1 || len(e.devices) != 1 || e.devices[device(99)] != 1 {
		t.Fatalf("tally after the releases: %d conns, devices %v", e.conns, e.devices)
	}
	q.release("", keyAddr(0), device(99))
	if _, ok := q.ips.m[keyAddr(0)]; ok {
		t.Error("an address with no connection and a full budget is still tracked")
	}
	runtime.KeepAlive(q)
}

// A key costs what KeyBytes charges, so DefaultMaxKeys' share holds them.
func TestKeyBytesCoverATrackedKey(t *testing.T) {
	now := time.Unix(1e9, 0)
	q := newQuota(Quotas{MaxKeys: 1 << 30}, func() time.Time { return now })
	const n = 20000
	// Each query tracks two keys: the user's and the address's.
	memtest.Charged(t, "user's and address's tracked keys", 2*KeyBytes, n, func(i int) {
		// GET /devices spends a check, so the key stays (its budget is not full).
		if !q.allowQuery(fmt.Sprintf("%08x-0000-4000-8000-000000000000", i), keyAddr(i)) {
			t.Fatal("allowQuery refused a first query")
		}
	})
	runtime.KeepAlive(q)
}

func TestDefaultMaxKeysFollowsMemory(t *testing.T) {
	for _, c := range []struct {
		memory int64
		want   int
	}{
		{400 << 20, 12800},
		{4 << 30, 131072},
		{16 << 20, 1024}, // the floor
	} {
		if got := DefaultMaxKeys(c.memory); got != c.want {
			t.Errorf("DefaultMaxKeys(%d) = %d, want %d", c.memory, got, c.want)
		}
	}
	if got := (Quotas{}).withDefaults().MaxKeys; got > 100000 || got < 1024 {
		t.Errorf("default MaxKeys %d", got)
	}
}
