package stream

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// TestIDOfIsShort: an external server keeps every ID (with the "l" of the
// live log before it) for the Duplicates window, so it is the key's 16
// bytes in 22 characters, which Go allocates in 24 bytes (32 hex
// characters took 48); and it still names its key alone.
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

// Embedded, an uplink's entry carries its key in KeyHeader and no
// Nats-Msg-Id, so the server keeps no ID and a copy is stored again (the
// ingest side's table recognises it); with NATS_URL it is as before.
func TestEmbeddedEntriesCarryTheirKey(t *testing.T) {
	ctx := context.Background()
	id := IDOf(MsgKey("D1", 1, []byte{1}, []byte("p")))
	e := openEmbedded(t, Config{})
	first := logOnce(t, e, id, false)
	second := logOnce(t, e, id, false)
	if second != first+1 {
		t.Errorf("a copy was stored at %d, want a new position after %d: the embedded stream must not deduplicate", second, first)
	}
	for _, seq := range []uint64{first, second} {
		m, err := e.live.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Header.Get(KeyHeader); got != id {
			t.Errorf("entry %d: %s %q, want %q", seq, KeyHeader, got, id)
		}
		if got := m.Header.Get(jetstream.MsgIDHeader); got != "" {
			t.Errorf("entry %d: Nats-Msg-Id %q, want none embedded", seq, got)
		}
	}
	entry := livelog.Error("D1", time.Now(), "test")
	if seq, dup, err := e.Log(ctx, entry, id); err != nil || dup || seq != second+1 {
		t.Errorf("Log of a third copy: seq %d dup %v err %v, want %d, false, nil", seq, dup, err, second+1)
	}

	t.Run("NATS_URL", func(t *testing.T) {
		x := openExternal(t)
		first := logOnce(t, x, id, false)
		if again := logOnce(t, x, id, true); again != first {
			t.Errorf("a copy got position %d, want the first one's %d", again, first)
		}
		m, err := x.live.GetMsg(ctx, first)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Header.Get(jetstream.MsgIDHeader); got != "l"+id {
			t.Errorf("Nats-Msg-Id %q, want %q", got, "l"+id)
		}
		if got := m.Header.Get(KeyHeader); got != "" {
			t.Errorf("%s %q with NATS_URL, want none", KeyHeader, got)
		}
		if n, err := x.RecentKeys(ctx, time.Time{}, func([16]byte, uint64, time.Time) { t.Error("a key read with NATS_URL") }); n != 0 || err != nil {
			t.Errorf("RecentKeys with NATS_URL: %d, %v; want 0, nil", n, err)
		}
	})
}

// logOnce logs an uplink entry with id on D1 and checks dup.
func logOnce(t *testing.T, e *Engine, id string, wantDup bool) uint64 {
	t.Helper()
	seq, dup, err := e.LogJSON(context.Background(), "D1", []byte(`{"type":"uplink"}`), id)
	if err != nil || dup != wantDup {
		t.Fatalf("LogJSON: seq %d dup %v err %v, want dup %v", seq, dup, err, wantDup)
	}
	return seq
}

// openExternal opens an engine on NATS_URL: a JetStream server of the
// test's own on a loopback port.
func openExternal(t *testing.T) *Engine {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("test NATS server did not start")
	}
	return openEmbedded(t, Config{URL: ns.ClientURL()})
}

type keyAt struct {
	key  [16]byte
	seq  uint64
	at   time.Time
	sent time.Time // want only: just before the publish (at: just after its ack)
}

func recentKeys(t *testing.T, e *Engine, since time.Time) []keyAt {
	t.Helper()
	var got []keyAt
	n, err := e.RecentKeys(context.Background(), since, func(key [16]byte, seq uint64, at time.Time) {
		got = append(got, keyAt{key: key, seq: seq, at: at})
	})
	if err != nil || n != len(got) {
		t.Fatalf("RecentKeys since %v: %d, %v, with %d passed", since, n, err, len(got))
	}
	return got
}

func TestRecentKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := openEmbedded(t, Config{DataDir: dir})
	if got := recentKeys(t, e, time.Time{}); len(got) != 0 {
		t.Fatalf("an empty stream gave %d keys", len(got))
	}
	before := time.Now()
	var want []keyAt
	publish := func(i int) {
		k := MsgKey("D1", int32(i), nil, []byte("p"))
		sent := time.Now()
		seq, _, err := e.LogJSON(ctx, fmt.Sprint("D", i%3), []byte(`{"type":"uplink"}`), IDOf(k))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, keyAt{k, seq, time.Now(), sent})
	}
	publish(0)
	// In between: an entry without a key (an error entry), one of the
	// version before (its key as Nats-Msg-Id: read too, so that a copy
	// straddling the upgrade is still recognised), and malformed headers.
	e.LogAsync(livelog.Error("D1", time.Now(), "Rejected uplink: test"))
	publish(1)
	oldKey := MsgKey("OLD", 1, nil, nil)
	old := IDOf(oldKey)
	for i, h := range []nats.Header{{jetstream.MsgIDHeader: {"l" + old}}, {KeyHeader: {"short"}}, {KeyHeader: {old + "AA"}}, {jetstream.MsgIDHeader: {old}}} {
		sent := time.Now()
		ack, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: liveSubject + "D1", Data: []byte(`{}`), Header: h})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			want = append(want, keyAt{oldKey, ack.Sequence, time.Now(), sent})
		}
	}
	publish(2)
	mid := time.Now()
	publish(3)
	after := time.Now()

	check := func(name string, got, want []keyAt) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d keys, want %d", name, len(got), len(want))
		}
		for i := range want {
			g, w := got[i], want[i]
			if g.key != w.key || g.seq != w.seq {
				t.Errorf("%s: key %d is %x at %d, want %x at %d", name, i, g.key, g.seq, w.key, w.seq)
			}
			// The stream's clock is this machine's; its timestamps have
			// the wall clock's resolution, hence the millisecond.
			if g.at.Before(w.sent.Add(-time.Millisecond)) || g.at.After(w.at.Add(time.Millisecond)) {
				t.Errorf("%s: key %d stored at %v, published at %v and acknowledged at %v", name, i, g.at, w.sent, w.at)
			}
		}
	}
	check("since before", recentKeys(t, e, before), want)
	check("since between", recentKeys(t, e, mid), want[4:])
	check("since after", recentKeys(t, e, after), nil)

	// A restart: the keys are read from the file store.
	e.Close()
	e = openEmbedded(t, Config{DataDir: dir})
	check("after a restart", recentKeys(t, e, before), want)

	// More than the client buffers at once.
	for i := 4; i < 4+2*keysBuffer+10; i++ {
		publish(i)
	}
	check("many", recentKeys(t, e, before), want)

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.RecentKeys(cancelled, before, func([16]byte, uint64, time.Time) {}); err == nil {
		t.Error("RecentKeys with a cancelled context returned no error")
	}
}
