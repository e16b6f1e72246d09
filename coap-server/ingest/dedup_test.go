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

// TestDedupBeginHoldsACopyBack: while one copy of an uplink is being
// processed, a second one (from another address) is busy, not processed;
// once the first is remembered, a copy gets its answer; a key whose
// processing ended without an answer (5.03) can be processed again.
func TestDedupBeginHoldsACopyBack(t *testing.T) {
	d := NewDedup(1<<20, time.Minute)
	t0 := time.Unix(1000, 0)
	k := d.key("DEV", 1, []byte{1}, []byte("p"))
	if _, found, busy := d.begin(k, t0); found || busy {
		t.Fatalf("first copy: found %v busy %v, want neither", found, busy)
	}
	if _, found, busy := d.begin(k, t0); found || !busy {
		t.Fatalf("second copy while the first is processed: found %v busy %v, want busy", found, busy)
	}
	d.remember(k, codes.Changed, nil, 7, t0)
	d.end(k)
	if hit, found, busy := d.begin(k, t0); !found || busy || hit.seq != 7 {
		t.Fatalf("copy after the answer: %+v found %v busy %v, want the answer", hit, found, busy)
	}
	refused := d.key("DEV", 2, []byte{1}, []byte("p"))
	d.begin(refused, t0)
	d.end(refused) // answered 5.03: nothing remembered
	if _, found, busy := d.begin(refused, t0); found || busy {
		t.Fatalf("retry after a refusal: found %v busy %v, want it processed", found, busy)
	}
	if len(d.working) != 1 {
		t.Errorf("%d keys claimed, want 1 (the retry's)", len(d.working))
	}
}

// TestStrictDedupNeverForgetsEarly: at its bound a strict Dedup is Full
// and keeps every answer until it expires; one that is not strict forgets
// its oldest and is never Full.
func TestStrictDedupNeverForgetsEarly(t *testing.T) {
	t0 := time.Unix(1000, 0)
	strict, loose := NewStrictDedup(2*dedupEntryBytes, time.Minute), NewDedup(2*dedupEntryBytes, time.Minute)
	for i := range 3 {
		for _, d := range []*Dedup{strict, loose} {
			if i == 2 && d == strict && !d.Full(t0, true) {
				t.Fatal("strict Dedup with two answers of two is not Full")
			}
			d.remember(d.key("DEV", int32(i), nil, nil), codes.Changed, nil, uint64(i+1), t0)
		}
	}
	if loose.Full(t0, true) {
		t.Error("a Dedup that is not strict reports Full")
	}
	if _, ok := strict.lookup(strict.key("DEV", 0, nil, nil), t0); !ok {
		t.Error("strict Dedup forgot its oldest answer before it expired")
	}
	if _, ok := loose.lookup(loose.key("DEV", 0, nil, nil), t0); ok {
		t.Error("Dedup that is not strict kept its oldest answer past its bound")
	}
	if strict.Full(t0.Add(2*time.Minute), true) {
		t.Error("strict Dedup still Full once its answers expired")
	}
}

// TestDedupRestore: an uplink accepted before a restart, restored from
// the live log, is recognised (restored: its answer is not known) until
// EXCHANGE_LIFETIME after it was accepted; an expired one is not restored,
// and restoring stops at a strict Dedup's bound.
func TestDedupRestore(t *testing.T) {
	now := time.Unix(10_000, 0)
	d := NewStrictDedup(2*dedupEntryBytes, ExchangeLifetime)
	old, recent, third := d.key("DEV", 1, nil, nil), d.key("DEV", 2, nil, nil), d.key("DEV", 3, nil, nil)
	if d.Restore(old, 1, now.Add(-ExchangeLifetime), now) {
		t.Error("restored an uplink accepted EXCHANGE_LIFETIME ago")
	}
	if !d.Restore(recent, 2, now.Add(-time.Minute), now) || !d.Restore(third, 3, now.Add(-time.Second), now) {
		t.Fatal("recent uplinks not restored")
	}
	if d.Restore(d.key("DEV", 4, nil, nil), 4, now, now) {
		t.Error("restored past the strict bound")
	}
	hit, ok := d.lookup(recent, now)
	if !ok || !hit.restored || hit.seq != 2 || hit.code != codes.Changed {
		t.Fatalf("restored uplink: %+v %v, want a restored 2.04 at seq 2", hit, ok)
	}
	if _, ok := d.lookup(recent, now.Add(-time.Minute).Add(ExchangeLifetime+time.Second)); ok {
		t.Error("restored uplink still recognised past EXCHANGE_LIFETIME after it was accepted")
	}
}
