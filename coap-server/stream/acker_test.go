package stream

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestParseAck(t *testing.T) {
	for _, c := range []struct {
		in   string
		want pubAck
		err  error
	}{
		{`{"stream":"LIVELOG","seq":42}`, pubAck{Sequence: 42}, nil},
		{`{"stream":"LIVELOG","seq":7,"duplicate":true}`, pubAck{Sequence: 7, Duplicate: true}, nil},
		{`{"stream":"LIVELOG","seq":7,"duplicate": true}`, pubAck{Sequence: 7, Duplicate: true}, nil}, // as nats-server 2.15 writes it
		{`{"stream":"LIVELOG","seq":7,"duplicate":false}`, pubAck{Sequence: 7}, nil},
		{`{"stream":"LIVELOG","domain":"hub","seq":18446744073709551615}`, pubAck{Sequence: 18446744073709551615}, nil},
		{`{"seq": 9, "stream":"X"}`, pubAck{Sequence: 9}, nil}, // a space: read by encoding/json
		{`{"error":{"code":503,"err_code":10077,"description":"maximum bytes exceeded"},"stream":"UPLINKS","seq":0}`, pubAck{}, ErrFull},
		{`{"error":{"code":503,"err_code":10076,"description":"maximum messages exceeded"}}`, pubAck{}, ErrUnavailable},
		{`{"stream":"LIVELOG","seq":0}`, pubAck{}, ErrUnavailable},
		{`{"stream":"LIVELOG"}`, pubAck{}, ErrUnavailable},
		{`not json`, pubAck{}, ErrUnavailable},
		{``, pubAck{}, ErrUnavailable},
	} {
		got, err := parseAck([]byte(c.in))
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: err %v, want %v", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

// FuzzParseAck: acknowledgements come from the NATS server (with NATS_URL,
// one the operator runs). What parseAck accepts must be what encoding/json
// reads from the same bytes.
func FuzzParseAck(f *testing.F) {
	f.Add([]byte(`{"stream":"LIVELOG","seq":42}`))
	f.Add([]byte(`{"stream":"LIVELOG","seq":7,"duplicate":true}`))
	f.Add([]byte(`{"stream":"LIVELOG","seq":7,"duplicate": true}`))
	f.Add([]byte(`{"error":{"code":503,"err_code":10077,"description":"x"}}`))
	f.Add([]byte(`{"seq":12345678901234567890}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseAck(b)
		if err != nil {
			return
		}
		var r struct {
			Seq       uint64 `json:"seq"`
			Duplicate bool   `json:"duplicate"`
			Error     any    `json:"error"`
		}
		if json.Unmarshal(b, &r) != nil || r.Error != nil {
			return // the fast path reads what JSON would refuse: only its two fields matter
		}
		if got.Sequence != r.Seq {
			t.Fatalf("%q: seq %d, encoding/json reads %d", b, got.Sequence, r.Seq)
		}
	})
}

// TestPublishWithoutAStreamFailsFast: a subject no stream takes gets the
// server's no-responders status at once (ErrUnavailable, not a wait for
// the timeout), and nothing stays pending.
func TestPublishWithoutAStreamFailsFast(t *testing.T) {
	e := openEmbedded(t, Config{AckTimeout: time.Minute})
	done := make(chan error, 1)
	go func() {
		_, err := e.publish(context.Background(), &nats.Msg{Subject: "nobody.listens", Data: []byte("x")})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err %v, want ErrUnavailable", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a publish nobody takes waited for the ack timeout")
	}
	if n := pendingAcks(e); n != 0 {
		t.Fatalf("%d acknowledgements still awaited", n)
	}
}

// TestPublishGivenUpForgetsIt: a publish whose acknowledgement never
// comes (a subscriber that is not a stream takes it and never answers) is
// given up after AckTimeout, or when its context ends, and not awaited any
// more: nothing stays pending.
func TestPublishGivenUpForgetsIt(t *testing.T) {
	e := openEmbedded(t, Config{AckTimeout: 50 * time.Millisecond})
	sub, err := e.feed.SubscribeSync("silent.>")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := e.feed.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.publish(context.Background(), &nats.Msg{Subject: "silent.a", Data: []byte("x")}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("no acknowledgement: err %v, want ErrUnavailable", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	e.cfg.AckTimeout = time.Hour
	if _, err := e.publish(ctx, &nats.Msg{Subject: "silent.b", Data: []byte("x")}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("context ended: err %v, want ErrUnavailable", err)
	}
	if n := pendingAcks(e); n != 0 {
		t.Fatalf("%d acknowledgements still awaited", n)
	}
}

func pendingAcks(e *Engine) int {
	e.acks.mu.Lock()
	defer e.acks.mu.Unlock()
	return len(e.acks.pending)
}

// TestGivenUpWaitersComeBackEmpty: waiters are pooled, and a publish
// whose context ends just as deliver took its acknowledgement must not put
// the waiter back with that ack in it, for the next publish to read as its
// own position.
func TestGivenUpWaitersComeBackEmpty(t *testing.T) {
	e := openEmbedded(t, Config{})
	a := e.acks
	w := a.waiters.Get().(*waiter)
	a.mu.Lock()
	a.next++
	id := a.next
	a.pending[id] = w
	a.mu.Unlock()
	// The ack arrives, then the publish gives up (it saw ctx.Done first).
	a.deliver(&nats.Msg{Subject: a.prefix + strconv.FormatUint(id, 10), Data: []byte(`{"stream":"LIVELOG","seq":99}`)})
	a.forget(id, w)
	if n := len(w.ch); n != 0 {
		t.Fatalf("a given-up waiter went back to the pool holding %d acknowledgement(s)", n)
	}
	// And one whose ack never came: nothing to take.
	w = a.waiters.Get().(*waiter)
	a.mu.Lock()
	a.next++
	id = a.next
	a.pending[id] = w
	a.mu.Unlock()
	a.forget(id, w)
	if n := pendingAcks(e); n != 0 || len(w.ch) != 0 {
		t.Fatalf("%d acknowledgements still awaited, %d in the waiter", n, len(w.ch))
	}
}

// TestCloseGivesUpWaitingPublishes: a publish waiting without a deadline
// of its own ends when the engine closes, instead of waiting for ever.
func TestCloseGivesUpWaitingPublishes(t *testing.T) {
	e := openEmbedded(t, Config{})
	a := e.acks
	w := a.waiters.Get().(*waiter)
	w.deadline = time.Now().Add(time.Hour)
	a.mu.Lock()
	a.next++
	a.pending[a.next] = w
	a.mu.Unlock()
	e.Close()
	select {
	case m := <-w.ch:
		if m != nil {
			t.Fatalf("closing delivered %v, want the give-up (nil)", m)
		}
	default:
		t.Fatal("closing left a waiting publish waiting")
	}
}
