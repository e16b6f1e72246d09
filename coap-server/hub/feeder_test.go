package hub

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// countingFeed counts starts and signals each stop.
type countingFeed struct {
	starts  atomic.Int32
	stopped chan struct{}
	fail    atomic.Bool
}

func newCountingFeed() *countingFeed { return &countingFeed{stopped: make(chan struct{}, 16)} }

func (c *countingFeed) start() (func(), error) {
	if c.fail.Load() {
		return nil, errors.New("nats: down")
	}
	c.starts.Add(1)
	return func() { c.stopped <- struct{}{} }, nil
}

func TestFeederRunsOnlyWhileHeld(t *testing.T) {
	c := newCountingFeed()
	f := NewFeeder(c.start, 10*time.Millisecond)
	if f.Running() {
		t.Fatal("running before anyone held it")
	}
	r1, err := f.Hold()
	if err != nil {
		t.Fatal(err)
	}
	r2, err := f.Hold()
	if err != nil {
		t.Fatal(err)
	}
	if n := c.starts.Load(); n != 1 || !f.Running() {
		t.Fatalf("two holders: %d starts, running %v; want one start", n, f.Running())
	}
	r1()
	r1() // a second call of the same release changes nothing
	if !f.Running() {
		t.Fatal("stopped while a holder remains")
	}
	r2()
	select {
	case <-c.stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the feed was not stopped after its last holder left")
	}
	if f.Running() {
		t.Fatal("reported running after the stop")
	}
	r3, err := f.Hold()
	if err != nil {
		t.Fatal(err)
	}
	defer r3()
	if n := c.starts.Load(); n != 2 {
		t.Fatalf("%d starts, want a second one for the next holder", n)
	}
}

// A holder that comes back within the linger finds the feed running: the
// stop scheduled by the last release is void.
func TestFeederLingerSpansAReconnect(t *testing.T) {
	c := newCountingFeed()
	f := NewFeeder(c.start, time.Hour)
	r, err := f.Hold()
	if err != nil {
		t.Fatal(err)
	}
	r()
	r, err = f.Hold()
	if err != nil {
		t.Fatal(err)
	}
	if n := c.starts.Load(); n != 1 {
		t.Fatalf("%d starts across a reconnect within the linger, want 1", n)
	}
	r()
	f.Close()
	select {
	case <-c.stopped:
	default:
		t.Fatal("Close did not stop the feed")
	}
}

func TestFeederStartErrorIsRetried(t *testing.T) {
	c := newCountingFeed()
	c.fail.Store(true)
	f := NewFeeder(c.start, time.Hour)
	if _, err := f.Hold(); err == nil {
		t.Fatal("Hold succeeded while the feed cannot start")
	}
	c.fail.Store(false)
	r, err := f.Hold()
	if err != nil {
		t.Fatalf("Hold after the stream came back: %v", err)
	}
	r()
	f.Close()
}
