package stream

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestIDBudgetCountsAWindow(t *testing.T) {
	const window = 64 * time.Second // one-second slots
	b := newIDBudget(10, window)
	t0 := time.Unix(1_800_000_000, 0)
	for i := range 10 {
		if !b.take(t0.Add(time.Duration(i)*time.Second), 1) {
			t.Fatalf("take %d refused under the bound", i)
		}
	}
	if b.take(t0.Add(10*time.Second), 1) {
		t.Fatal("an 11th ID within the window was taken")
	}
	if b.take(t0.Add(10*time.Second), 0); !b.take(t0, 0) {
		t.Fatal("taking nothing is refused")
	}
	// The server forgets an ID a window after its publish; the budget
	// must not forget it sooner.
	if b.take(t0.Add(window), 1) {
		t.Fatal("the first ID was forgotten exactly one window after it: the server may still hold it")
	}
	if !b.take(t0.Add(window+time.Second), 1) {
		t.Fatal("an ID more than a window old (and a slot) still counts")
	}
	if held, _ := b.state(); held != 10 {
		t.Fatalf("held %d, want 10 (9 of the first, 1 new)", held)
	}
	// A clock that steps back counts in the newest slot, never frees.
	if b.take(t0, 1) {
		t.Fatal("a clock step back freed IDs")
	}
	// Long idle: everything is forgotten at once.
	if !b.take(t0.Add(10*window), 10) {
		t.Fatal("after ten windows idle the budget is not empty")
	}
	if b.take(t0.Add(10*window), 1) {
		t.Fatal("over the bound after a reset")
	}
}

// What the bound does is keep the count of IDs published within the last
// window (what nats-server's dedup map holds) at or under max, whatever
// the rate: checked against an exact list of publish times.
func TestIDBudgetNeverUndercountsTheServer(t *testing.T) {
	const window = 5 * time.Minute
	b := newIDBudget(500, window)
	var times []time.Time
	now := time.Unix(1_800_000_000, 0)
	for i := range 20000 {
		now = now.Add(time.Duration(i%7) * 97 * time.Millisecond)
		if b.take(now, 1) {
			times = append(times, now)
		}
		inWindow := 0
		for j := len(times) - 1; j >= 0 && now.Sub(times[j]) < window; j-- {
			inWindow++
		}
		if held, _ := b.state(); int64(inWindow) > held || held > 500 {
			t.Fatalf("at %v: the server holds %d IDs, the budget counts %d (max 500)", now, inWindow, held)
		}
	}
}

func TestPublishRefusedAtTheIDBound(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true, IDMemory: 2 * IDBytes})
	ctx := context.Background()
	a, payload := accepted(t, "D1", 1)
	for i := range 2 { // two uplinks, one ID each (their entries')
		if err := e.PublishUplink(ctx, a, payload); err != nil {
			t.Fatalf("uplink %d: %v", i, err)
		}
	}
	if err := e.PublishUplink(ctx, a, payload); !errors.Is(err, ErrBusy) {
		t.Fatalf("third uplink: err %v, want ErrBusy", err)
	}
	// The entries of the accepted uplinks were counted with them.
	if _, _, err := e.LogJSON(ctx, "D1", []byte(`{}`), MsgID("D1", 0, nil, payload)); err != nil {
		t.Fatalf("entry of an accepted uplink refused: %v", err)
	}
	if held, bound := e.IDsHeld(); held != 2 || bound != 2 {
		t.Errorf("IDs held %d of %d, want 2 of 2", held, bound)
	}
	external := Config{URL: "nats://127.0.0.1:1"}.withDefaults()
	if external.IDMemory != 0 {
		t.Errorf("with NATS_URL the bound is %d bytes, want none: the cluster holds the IDs", external.IDMemory)
	}
}

// IDBytes is what the bound rests on: the embedded server's heap per
// message published with an ID, measured here against the same publishes
// without one (124–151 B, up to 270 B with the block buffer). It fails if
// nats-server comes to hold much more per ID.
func TestMsgIDHeapCost(t *testing.T) {
	const n = 12000
	// A small stream has small blocks (a block's buffer is the noise in
	// this measurement); the server remembers IDs whether or not it still
	// retains their messages.
	cfg := Config{LiveBytes: 1 << 20}
	subject := func(i int) string { return fmt.Sprint("D", i%100) }
	noID := func(int) string { return "" }
	without := heapPerMessage(t, cfg, n, subject, noID)
	with := heapPerMessage(t, cfg, n, subject, func(i int) string { return MsgID("D", int32(i), []byte{1}, nil) })
	t.Logf("heap per message: %d B without an ID, %d B with one", without, with)
	// As in TestSubjectHeapCost, the block's write buffer lands in some
	// rounds: this checks that an ID costs under twice IDBytes.
	if cost := with - without; cost > 2*IDBytes {
		t.Errorf("an ID costs %d B of heap for the Duplicates window, over twice IDBytes (%d): raise it", cost, IDBytes)
	}
}

// TestIDOfIsShort: the server keeps every ID (with the "l" of the live
// log before it) for the Duplicates window, so it is the key's 16 bytes in
// 22 characters, which Go allocates in 24 bytes (32 hex characters took
// 48); and it still names its key alone.
func TestIDOfIsShort(t *testing.T) {
	a := MsgKey("D1", 1, []byte{1}, []byte("p"))
	b := MsgKey("D1", 2, []byte{1}, []byte("p"))
	ia, ib := IDOf(a), IDOf(b)
	if len("l"+ia) > 24 {
		t.Errorf("live-log message ID %q is %d bytes, want at most 24", "l"+ia, len("l"+ia))
	}
	if ia == ib {
		t.Errorf("two keys, one ID %q", ia)
	}
	back, err := base64.RawURLEncoding.DecodeString(ia)
	if err != nil || !bytes.Equal(back, a[:]) {
		t.Errorf("IDOf(%x) = %q, which decodes to %x (%v)", a, ia, back, err)
	}
}

// MsgID is the live-log message ID of the uplink MsgKey names, as the
// ingest handler makes it (IDOf its key).
func MsgID(device string, mid int32, token, payload []byte) string {
	return IDOf(MsgKey(device, mid, token, payload))
}
