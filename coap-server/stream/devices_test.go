package stream

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

func TestDeviceBudget(t *testing.T) {
	const window = time.Hour
	d := newDeviceBudget(3, window)
	t0 := time.Unix(1_800_000_000, 0)
	for _, dev := range []string{"A", "B", "C", "A", "B"} {
		if !d.admit(t0, dev) {
			t.Fatalf("%s refused within the bound", dev)
		}
	}
	if d.admit(t0, "D") {
		t.Fatal("a fourth device was admitted")
	}
	// After one window A and B are seen again, C not: C still counts (its
	// entries may still be retained), so D still waits.
	t1 := t0.Add(window)
	if !d.admit(t1, "A") || !d.admit(t1, "B") {
		t.Fatal("a counted device was refused after a rotation")
	}
	if held, _ := d.state(); held != 3 {
		t.Fatalf("held %d after the rotation, want 3 (a device in both generations counts once)", held)
	}
	if d.admit(t1, "D") {
		t.Fatal("D admitted while C's entries may be retained")
	}
	// One more window: C was silent for two, so it no longer counts.
	t2 := t1.Add(window)
	if !d.admit(t2, "A") || !d.admit(t2, "D") {
		t.Fatal("D refused after C aged out")
	}
	if d.admit(t2, "E") {
		t.Fatal("E admitted over the bound (A, B from the last window, D)")
	}
	// A long silence forgets everyone at once.
	if !d.admit(t2.Add(3*window), "E") {
		t.Fatal("E refused after everyone was silent for three windows")
	}
	if held, _ := d.state(); held != 1 {
		t.Fatalf("held %d after the silence, want 1", held)
	}
}

// A steady fleet of exactly max devices, each seen once a window, is
// never refused across many rotations.
func TestDeviceBudgetKeepsASteadyFleet(t *testing.T) {
	const window, fleet = time.Hour, 100
	d := newDeviceBudget(fleet, window)
	now := time.Unix(1_800_000_000, 0)
	for round := range 10 {
		for i := range fleet {
			now = now.Add(window / fleet)
			if dev := fmt.Sprint("DEV", i); !d.admit(now, dev) {
				t.Fatalf("round %d: %s refused", round, dev)
			}
		}
	}
}

func TestPublishRefusedAtTheDeviceBound(t *testing.T) {
	e := openEmbedded(t, Config{Storage: true, DeviceMemory: 2 * DeviceBytes})
	ctx := context.Background()
	for i, dev := range []string{"D1", "D2", "D1"} {
		a, payload := accepted(t, dev, uint32(i))
		if err := e.PublishUplink(ctx, a, payload); err != nil {
			t.Fatalf("%s: %v", dev, err)
		}
	}
	a, payload := accepted(t, "D3", 1)
	if err := e.PublishUplink(ctx, a, payload); !errors.Is(err, ErrTooManyDevices) {
		t.Fatalf("a third device: err %v, want ErrTooManyDevices", err)
	}
	before := e.AsyncErrors()
	e.LogAsync(livelog.Error("D3", time.Now(), "Rejected uplink: test"))
	if got := e.AsyncErrors() - before; got != 1 {
		t.Errorf("an entry of a third device: %d async errors, want 1 (dropped and counted)", got)
	}
	if held, bound := e.DevicesHeld(); held != 2 || bound != 2 {
		t.Errorf("devices held %d of %d, want 2 of 2", held, bound)
	}
}

// SubjectBytes is what the device bound rests on: the embedded server's
// heap per distinct subject, measured against the same publishes on one
// subject (190–216 B, up to 300 B with the block buffer). It fails if
// nats-server comes to hold much more per subject.
func TestSubjectHeapCost(t *testing.T) {
	const n = 12000
	cfg := Config{LiveBytes: 64 << 20} // every message retained: so is its subject
	one := heapPerMessage(t, cfg, n, func(int) string { return "D" })
	distinct := heapPerMessage(t, cfg, n, func(i int) string { return fmt.Sprintf("DEV%08d", i) })
	t.Logf("heap per message: %d B on one subject, %d B on a subject each", one, distinct)
	// The current block's write buffer grows with the messages and lands
	// in some rounds (up to 130 B a message here), so this checks only
	// that nats-server does not hold twice what SubjectBytes assumes; the
	// flood test below checks the bound end to end.
	if cost := distinct - one; cost > 2*SubjectBytes {
		t.Errorf("a subject costs %d B of heap, over twice SubjectBytes (%d): raise it", cost, SubjectBytes)
	}
}

// heapPerMessage is the heap an embedded server on cfg holds per message
// for live-log publishes, the i-th on subject(i): the median
// of three rounds of n, so that a buffer the server happens to allocate
// during one round does not count as a cost per message.
func heapPerMessage(t *testing.T, cfg Config, n int, subject func(i int) string) int64 {
	t.Helper()
	e := openEmbedded(t, cfg)
	defer e.Close()
	data := []byte(`{"type":"uplink"}`)
	var rounds []int64
	prev := heapAfterGC()
	for r := range 3 {
		for i := r * n; i < (r+1)*n; i++ {
			if _, _, err := e.LogJSON(context.Background(), subject(i), data, ""); err != nil {
				t.Fatal(err)
			}
		}
		h := heapAfterGC()
		rounds = append(rounds, (h-prev)/int64(n))
		prev = h
	}
	slices.Sort(rounds)
	return rounds[1]
}

func heapAfterGC() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// A flood of uplinks, each from a new device ID (what AUTO_REGISTER lets
// anyone send), holds the embedded server's heap within the device bound,
// while a device already counted is still accepted. Its live-log entries
// carry their keys (KeyHeader), as an uplink's do.
func TestFloodOfNewDevicesHoldsMemoryUnderTheBound(t *testing.T) {
	const devices, flood = 2000, 50000
	bound := int64(devices * DeviceBytes)
	e := openEmbedded(t, Config{Storage: true, DeviceMemory: bound})
	ctx := context.Background()
	known, payload := accepted(t, "KNOWN", 0)
	if err := e.PublishUplink(ctx, known, payload); err != nil {
		t.Fatal(err)
	}
	h0 := heapAfterGC()
	refused := 0
	for i := range flood {
		dev := fmt.Sprintf("FLOOD%07d", i)
		a, p := accepted(t, dev, 1)
		id := MsgID(dev, 1, nil, p)
		err := e.PublishUplink(ctx, a, p)
		if err == nil {
			_, _, err = e.LogJSON(ctx, dev, []byte(`{"type":"uplink"}`), id)
		}
		switch {
		case errors.Is(err, ErrTooManyDevices):
			refused++
		case err != nil:
			t.Fatal(err)
		}
	}
	grew := heapAfterGC() - h0
	t.Logf("%d of %d refused; heap grew %d B (bound %d B)", refused, flood, grew, bound)
	if grew > 2*bound {
		t.Errorf("heap grew %d B under a flood of new devices, over twice the bound (%d B)", grew, bound)
	}
	if refused < flood-devices {
		t.Errorf("only %d of %d new devices refused", refused, flood)
	}
	if err := e.PublishUplink(ctx, known, payload); err != nil {
		t.Errorf("a counted device refused during the flood: %v", err)
	}
}
