package hub

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
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
	r1, err := f.Hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r2, err := f.Hold(context.Background())
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
	r3, err := f.Hold(context.Background())
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
	r, err := f.Hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r()
	r, err = f.Hold(context.Background())
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
	if _, err := f.Hold(context.Background()); err == nil {
		t.Fatal("Hold succeeded while the feed cannot start")
	}
	c.fail.Store(false)
	r, err := f.Hold(context.Background())
	if err != nil {
		t.Fatalf("Hold after the stream came back: %v", err)
	}
	r()
	f.Close()
}

// Holders arriving while the feed is starting wait for that one start and
// share its error: five connects to a stream that cannot start get their
// 503 after one attempt, not one attempt each in turn (five times the
// connect timeout for the last). Close does not wait for a start under
// way; the start that ends after it is undone. Both waited on the lock
// Hold kept through the start.
func TestFeederStartsOnceForHoldersArrivingMeanwhile(t *testing.T) {
	var starts atomic.Int32
	entered, proceed, stopped := make(chan struct{}, 8), make(chan error), make(chan struct{}, 8)
	f := NewFeeder(func() (func(), error) {
		starts.Add(1)
		entered <- struct{}{}
		if err := <-proceed; err != nil {
			return nil, err
		}
		return func() { stopped <- struct{}{} }, nil
	}, time.Hour)
	waiting := func() int { f.mu.Lock(); defer f.mu.Unlock(); return f.waiting }
	hold := func(n int) chan error {
		errs := make(chan error, n)
		for range n {
			go func() {
				r, err := f.Hold(context.Background())
				if err == nil {
					r()
				}
				errs <- err
			}()
		}
		return errs
	}
	collect := func(errs chan error, n int) (failed int) {
		for range n {
			if <-errs != nil {
				failed++
			}
		}
		return failed
	}

	errs := hold(5)
	<-entered
	testwait.For(t, "four holders waiting on the start", func() bool { return waiting() == 4 })
	proceed <- errors.New("nats: no responders")
	if failed := collect(errs, 5); failed != 5 || starts.Load() != 1 {
		t.Fatalf("%d of 5 holders failed after %d starts, want 5 after 1", failed, starts.Load())
	}

	// Close while a start is under way: it returns at once, and the
	// start that succeeds after it is stopped.
	errs = hold(1)
	<-entered
	closed := make(chan struct{})
	go func() { f.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for the start under way")
	}
	proceed <- nil
	if err := <-errs; !errors.Is(err, ErrFeedClosed) {
		t.Fatalf("Hold across a Close: %v, want ErrFeedClosed", err)
	}
	<-stopped
	if f.Running() {
		t.Fatal("running after a Close")
	}
}
