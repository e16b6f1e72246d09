package ingest

import (
	"fmt"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
)

func TestDedup(t *testing.T) {
	// Room for a with its answer and one more entry, not for a third.
	d := NewDedup(entrySize([]byte("downlink"))+entrySize(nil)+dedupEntryBytes/2, time.Minute)
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
// quarter: the byte bound means what it says. Half the entries carry a
// downlink answer, as a fleet with queued configurations might.
func TestDedupBytesMatchTheHeap(t *testing.T) {
	const n = 100_000
	keys := make([]dedupKey, n)
	d := NewDedup(1<<30, 0)
	for i := range keys {
		// A realistic device ID and 4-byte token.
		keys[i] = d.key(fmt.Sprintf("SIM-%06d", i), int32(i), []byte{1, 2, 3, byte(i)}, []byte{byte(i)})
	}
	for _, withAnswers := range []bool{false, true} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		t0 := time.Now()
		for i, k := range keys {
			var answer []byte
			if withAnswers && i%2 == 0 {
				answer = make([]byte, 24) // a Downlink with a few fields
			}
			d.remember(k, codes.Changed, answer, 1, t0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		if withAnswers {
			// The second round replaced the first's entries: what it added
			// is the answers (the ring grew by as many slots as before).
			heap += int64(dedupEntryBytes) * n
		}
		charged := d.Bytes()
		t.Logf("answers %v: %d entries: heap %d B (%.0f B each), charged %d B (%.0f B each)", withAnswers, n, heap, float64(heap)/n, charged, float64(charged)/n)
		if heap > charged*5/4 || heap < charged/2 {
			t.Errorf("answers %v: heap %d B for %d B charged: dedupEntryBytes or dedupAnswerOverhead is off", withAnswers, heap, charged)
		}
	}
	runtime.KeepAlive(keys)
}

// At the design rate of 1,000 uplinks/s, the default bound on the 512 MB
// machine (a sixteenth of GOMEMLIMIT=400MiB) remembers every answer for the
// whole EXCHANGE_LIFETIME: a retransmission 240 s after the original is
// still recognised. (Entries of 300 B with pointers held 85,000 answers,
// 85 s of this rate.)
func TestDedupHoldsAWholeExchangeLifetimeAt1000PerSecond(t *testing.T) {
	d := NewDedup(400<<20/dedupShare, ExchangeLifetime)
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	const rate = 1000
	n := int(ExchangeLifetime/time.Second) * rate
	first := d.key("DEV-0", 0, []byte{1, 2, 3, 4}, []byte("first"))
	d.remember(first, codes.Changed, nil, 1, t0)
	for i := 1; i < n; i++ {
		at := t0.Add(time.Duration(i) * time.Second / rate)
		k := d.key(fmt.Sprintf("DEV-%d", i%5000), int32(i), []byte{1, 2, 3, 4}, []byte{byte(i), byte(i >> 8)})
		if d.remember(k, codes.Changed, nil, uint64(i), at) {
			t.Fatalf("answer evicted early at %d of %d (%d remembered, %d B)", i, n, d.Len(), d.Bytes())
		}
	}
	if hit, ok := d.lookup(first, t0.Add(240*time.Second)); !ok || hit.seq != 1 {
		t.Errorf("the first answer is forgotten 240 s later (%d remembered, %d B)", d.Len(), d.Bytes())
	}
}

// Nothing Dedup keeps per entry holds a pointer, so the collector does not
// scan the table (see dedupEntryBytes).
func TestDedupEntriesHoldNoPointers(t *testing.T) {
	var d Dedup
	for _, typ := range []reflect.Type{reflect.TypeOf(dedupEntry{}), reflect.TypeOf(d.entries).Key(), reflect.TypeOf(d.entries).Elem()} {
		if p := pointerIn(typ); p != "" {
			t.Errorf("%v holds a pointer (%s)", typ, p)
		}
	}
}

// pointerIn names a field or element of t that is or holds a pointer.
func pointerIn(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Struct:
		for i := range t.NumField() {
			if p := pointerIn(t.Field(i).Type); p != "" {
				return t.Field(i).Name + ": " + p
			}
		}
		return ""
	case reflect.Array:
		return pointerIn(t.Elem())
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return ""
	default:
		return t.Kind().String()
	}
}
