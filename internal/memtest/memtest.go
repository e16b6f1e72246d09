// Package memtest measures what a structure holds on the heap, for the
// tests that check what a memory bound charges per entry. Tests only.
package memtest

import (
	"runtime"
	"testing"
)

// LiveHeap is the live heap after two collections (the second frees what
// the first only finalised).
func LiveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BytesPer is what the live heap grows by per call of add, over n calls.
// The caller keeps what add built alive past it (runtime.KeepAlive).
func BytesPer(n int, add func(i int)) uint64 {
	before := LiveHeap()
	for i := range n {
		add(i)
	}
	after := LiveHeap()
	if after < before {
		return 0
	}
	return (after - before) / uint64(n)
}

// Charged fails t unless n calls of add grow the live heap by at most
// charge bytes each, what a bound charges per entry; it logs what one took.
func Charged(t testing.TB, what string, charge uint64, n int, add func(i int)) {
	t.Helper()
	per := BytesPer(n, add)
	t.Logf("%d B per %s", per, what)
	if per > charge {
		t.Errorf("a %s holds %d B, its bound charges %d", what, per, charge)
	}
}
