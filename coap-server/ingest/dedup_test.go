package ingest

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
)

func TestDedup(t *testing.T) {
	d := NewDedup(600, time.Minute) // two entries of ~300 B (entrySize)
	t0 := time.Unix(1000, 0)
	a := d.key("DEV", 1, []byte{1}, []byte("payload"))
	if _, ok := d.lookup(a, t0); ok {
		t.Fatal("empty dedup found an answer")
	}
	d.remember(a, codes.Changed, []byte("downlink"), 42, t0)
	if hit, ok := d.lookup(a, t0.Add(time.Second)); !ok || hit.code != codes.Changed || string(hit.answer) != "downlink" || hit.seq != 42 || hit.copies != 2 {
		t.Fatalf("lookup = %+v %v", hit, ok)
	}
	if hit, _ := d.lookup(a, t0.Add(time.Second)); hit.copies != 3 {
		t.Fatalf("third copy counted as %d", hit.copies)
	}
	for name, k := range map[string]dedupKey{
		"other device":  d.key("DEV2", 1, []byte{1}, []byte("payload")),
		"other mid":     d.key("DEV", 2, []byte{1}, []byte("payload")),
		"other token":   d.key("DEV", 1, []byte{2}, []byte("payload")),
		"other payload": d.key("DEV", 1, []byte{1}, []byte("payloaD")),
	} {
		if _, ok := d.lookup(k, t0); ok {
			t.Errorf("%s: found a's answer", name)
		}
	}
	if _, ok := d.lookup(a, t0.Add(time.Minute+time.Second)); ok {
		t.Error("answer outlived its ttl")
	}
	// Bounded: a third entry evicts the oldest.
	b := d.key("DEV", 2, nil, nil)
	c := d.key("DEV", 3, nil, nil)
	if d.remember(b, codes.Changed, nil, 0, t0) {
		t.Error("evicted below the limit")
	}
	if !d.remember(c, codes.Changed, nil, 0, t0) {
		t.Error("no eviction at the limit")
	}
	if _, ok := d.lookup(a, t0); ok || d.Len() != 2 {
		t.Errorf("oldest kept (len %d)", d.Len())
	}
	// Expired entries leave on the next remember.
	d.remember(a, codes.Changed, nil, 0, t0.Add(2*time.Minute))
	if d.Len() != 1 {
		t.Errorf("len %d after expiry, want 1", d.Len())
	}
}

// What Dedup charges per entry is what the heap holds for it, within a
// quarter: the byte bound means what it says.
func TestDedupBytesMatchTheHeap(t *testing.T) {
	const n = 100_000
	keys := make([]dedupKey, n)
	d := NewDedup(1<<30, 0)
	for i := range keys {
		// A realistic device ID and 4-byte token; no downlink.
		keys[i] = d.key(fmt.Sprintf("SIM-%06d", i), int32(i), []byte{1, 2, 3, byte(i)}, []byte{byte(i)})
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	t0 := time.Now()
	for _, k := range keys {
		d.remember(k, codes.Changed, nil, 1, t0)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	// The keys' device strings (16 B) and tokens (8 B) exist before (keys
	// holds them): count them as the entries' own, as on the datagram path.
	heap := int64(after.HeapAlloc-before.HeapAlloc) + n*(16+8)
	charged := d.Bytes()
	t.Logf("%d entries: heap %d B (%.0f B each), charged %d B (%.0f B each)", n, heap, float64(heap)/n, charged, float64(charged)/n)
	if heap > charged*5/4 || heap < charged/2 {
		t.Errorf("heap %d B for %d B charged: dedupEntryOverhead is off", heap, charged)
	}
	runtime.KeepAlive(keys)
}
