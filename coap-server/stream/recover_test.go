package stream

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Uplinks answered (in UPLINKS) whose entries a crash kept from the live
// log get them at the next start, each once, with its key; those whose
// entries were stored get no second one, and a second start logs nothing.
func TestRecoverEntriesOfUplinksAnsweredBeforeACrash(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := openEmbedded(t, Config{DataDir: dir, Storage: true})
	const total, logged = 40, 25
	keys := make(map[[16]byte]string)
	for i := range total {
		a, payload := accepted(t, "REC", uint32(i))
		a.Key = MsgKey("REC", int32(i), nil, payload)
		keys[a.Key] = IDOf(a.Key)
		if err := e.PublishUplink(ctx, a, payload); err != nil {
			t.Fatal(err)
		}
		if i < logged { // the crash took the entries of the rest
			if err := e.LogBehind(livelog.Uplink("REC", a.ReceivedAt, a.Uplink, nil), IDOf(a.Key), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.Close()

	e = openEmbedded(t, Config{DataDir: dir, Storage: true})
	got := make(map[[16]byte]uint64)
	n, err := e.RecoverEntries(ctx, func(key [16]byte, seq uint64, _ time.Time) { got[key] = seq })
	if err != nil {
		t.Fatal(err)
	}
	if n != total-logged || len(got) != total-logged {
		t.Fatalf("recovered %d entries (%d keys), want %d", n, len(got), total-logged)
	}
	// Every uplink has one entry now, with its key, in the order of the
	// uplinks.
	counts := make(map[[16]byte]int)
	var order []uint32
	if _, err := e.RecentKeys(ctx, time.Time{}, func(key [16]byte, seq uint64, _ time.Time) {
		counts[key]++
		m, err := e.live.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var le struct {
			Data struct {
				Count uint32 `json:"uplink_count"`
			} `json:"data"`
		}
		if err := json.Unmarshal(m.Data, &le); err != nil {
			t.Fatal(err)
		}
		order = append(order, le.Data.Count)
		if s, ok := got[key]; ok && s != seq {
			t.Errorf("key %s recovered at %d, found at %d", keys[key], s, seq)
		}
	}); err != nil {
		t.Fatal(err)
	}
	for k, id := range keys {
		if counts[k] != 1 {
			t.Errorf("uplink %s has %d entries, want 1", id, counts[k])
		}
	}
	for i, c := range order {
		if c != uint32(i) {
			t.Fatalf("entries in the order %v, want the uplinks' order", order)
		}
	}

	e.Close()
	e = openEmbedded(t, Config{DataDir: dir, Storage: true})
	if n, err := e.RecoverEntries(ctx, func([16]byte, uint64, time.Time) {}); err != nil || n != 0 {
		t.Fatalf("a second start recovered %d entries (%v), want none", n, err)
	}
}

// An uplink whose entry was stored and then dropped by retention (here
// LIVELOG_PER_DEVICE=1: the device's next entry pushed it out) is not
// given a second entry at the next start: that would show it twice to a
// client resuming with since, and push out the entry that belongs there.
// An uplink answered after the entry kept, whose own entry a crash took,
// still gets its entry.
func TestRecoverEntriesSkipsEntriesRetentionDropped(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Storage: true, LivePerDevice: 1}
	e := openEmbedded(t, cfg)
	var keys [][16]byte
	for i := range 3 {
		a, payload := accepted(t, "RET", uint32(i))
		a.Key = MsgKey("RET", int32(i), nil, payload)
		keys = append(keys, a.Key)
		if err := e.PublishUplink(ctx, a, payload); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			break // the crash took this one's entry
		}
		seq, _, err := e.Log(ctx, livelog.Uplink("RET", a.ReceivedAt, a.Uplink, nil), IDOf(a.Key))
		if err != nil || seq == 0 {
			t.Fatalf("entry %d: %d, %v", i, seq, err)
		}
	}
	e.Close()

	e = openEmbedded(t, cfg)
	got := make(map[[16]byte]bool)
	if _, err := e.RecoverEntries(ctx, func(key [16]byte, _ uint64, _ time.Time) { got[key] = true }); err != nil {
		t.Fatal(err)
	}
	if got[keys[0]] {
		t.Error("the uplink whose entry retention dropped got a second one")
	}
	if got[keys[1]] {
		t.Error("the uplink whose entry is kept got a second one")
	}
	if !got[keys[2]] {
		t.Error("the uplink whose entry the crash took got none")
	}
}

// An uplink whose entry a crash took gets it at the next start even when
// a later entry of its device was stored (a downlink event, logged without
// waiting) and retention dropped nothing: the device's oldest kept entry
// is no reason to skip it then.
func TestRecoverEntriesDespiteALaterEntryOfTheDevice(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := openEmbedded(t, Config{DataDir: dir, Storage: true})
	a, payload := accepted(t, "LATER", 1)
	a.Key = MsgKey("LATER", 1, nil, payload)
	if err := e.PublishUplink(ctx, a, payload); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.Log(ctx, livelog.Error("LATER", time.Now(), "a later entry"), ""); err != nil {
		t.Fatal(err)
	}
	e.Close()

	e = openEmbedded(t, Config{DataDir: dir, Storage: true})
	got := false
	if _, err := e.RecoverEntries(ctx, func(key [16]byte, _ uint64, _ time.Time) { got = got || key == a.Key }); err != nil {
		t.Fatal(err)
	}
	if !got {
		t.Fatal("the uplink whose entry the crash took got none")
	}
}

// A live log that retention emptied (every entry past LIVELOG_MAX_AGE,
// as after a long stop; a purge leaves the stream in the same state) has
// no oldest entry to date what it dropped: an uplink older than that age,
// still in UPLINKS (the database was down), had its entry stored and
// dropped, and gets no second one; a recent one whose entry a crash took
// gets it. Before, every recent uplink of UPLINKS was logged again.
func TestRecoverEntriesAfterTheLiveLogExpired(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := openEmbedded(t, Config{DataDir: dir, Storage: true})
	old, payload := accepted(t, "EXP", 1)
	old.Key = MsgKey("EXP", 1, nil, payload)
	old.ReceivedAt = time.Now().Add(-DefaultLiveMaxAge - time.Hour)
	if err := e.PublishUplink(ctx, old, payload); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.Log(ctx, livelog.Uplink("EXP", old.ReceivedAt, old.Uplink, nil), IDOf(old.Key)); err != nil {
		t.Fatal(err)
	}
	recent, payload := accepted(t, "EXP", 2)
	recent.Key = MsgKey("EXP", 2, nil, payload)
	if err := e.PublishUplink(ctx, recent, payload); err != nil {
		t.Fatal(err)
	}
	if err := e.live.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	e.Close()

	e = openEmbedded(t, Config{DataDir: dir, Storage: true})
	got := make(map[[16]byte]bool)
	if _, err := e.RecoverEntries(ctx, func(key [16]byte, _ uint64, _ time.Time) { got[key] = true }); err != nil {
		t.Fatal(err)
	}
	if got[old.Key] {
		t.Error("the uplink whose entry aged out got a second one")
	}
	if !got[recent.Key] {
		t.Error("the uplink whose entry the crash took got none")
	}
}
