package hub

import (
	"context"
	"errors"
	"sync"
	"time"
)

// DefaultLinger is how long a Feeder keeps the feed after its last holder
// left: a subscriber that reconnects (a relay's upstream, a reloaded page)
// finds it running.
const DefaultLinger = 30 * time.Second

// Feeder runs the hub's feed (the stream's live-log consumer, every
// instance's entries) only while a subscriber holds it. Delivering every
// entry to an instance nobody watches costs about a third of what the live
// log costs per uplink (BenchmarkFeed in the stream package), and most of
// the time nobody watches.
//
// A subscriber takes Hold before it subscribes and before it reads its
// starting position: the feed then carries every entry stored after that
// position, so history and live join with no gap (httpapi's gate).
type Feeder struct {
	start  func() (stop func(), err error)
	linger time.Duration

	mu      sync.Mutex
	users   int
	stop    func()   // nil when not running
	gen     uint64   // of the last release that scheduled a stop
	attempt *attempt // the start under way; nil when none
	closes  uint64   // Close calls: a start that outlives one is undone
	waiting int      // holders waiting on attempt (for tests)
}

// attempt is one start of the feed, which every holder arriving while it
// runs waits for and shares: a burst of connects to a stream that cannot
// start gets one error after one attempt, not one attempt each in turn.
type attempt struct {
	done chan struct{}
	err  error
}

// ErrFeedClosed is Hold's error when Close ended the start it waited for.
var ErrFeedClosed = errors.New("hub: live-log feed closed while starting")

// NewFeeder returns a Feeder that starts the feed with start; linger 0 is
// DefaultLinger.
func NewFeeder(start func() (stop func(), err error), linger time.Duration) *Feeder {
	if linger <= 0 {
		linger = DefaultLinger
	}
	return &Feeder{start: start, linger: linger}
}

// Hold starts the feed unless it is running and keeps it running until
// release is called (once). The start runs without the lock: holders
// arriving meanwhile wait for it (or for ctx) and share its error, and
// Close never waits for it. The error is start's, ctx's or ErrFeedClosed.
func (f *Feeder) Hold(ctx context.Context) (release func(), err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.stop == nil {
		if a := f.attempt; a != nil {
			f.waiting++
			f.mu.Unlock()
			select {
			case <-a.done:
			case <-ctx.Done():
			}
			f.mu.Lock()
			f.waiting--
			switch {
			case ctx.Err() != nil:
				return nil, ctx.Err()
			case a.err != nil:
				return nil, a.err
			}
			continue // started (or stopped since: start again)
		}
		if err := f.startLocked(); err != nil {
			return nil, err
		}
	}
	f.users++
	f.gen++ // a stop scheduled before now is void
	var once sync.Once
	return func() { once.Do(f.release) }, nil
}

// startLocked runs one attempt with f.mu released, and records it.
func (f *Feeder) startLocked() error {
	a := &attempt{done: make(chan struct{})}
	f.attempt = a
	closes := f.closes
	f.mu.Unlock()
	stop, err := f.start()
	f.mu.Lock()
	if err == nil && f.closes != closes {
		stop()
		err = ErrFeedClosed
	}
	if err == nil {
		f.stop = stop
	}
	a.err = err
	f.attempt = nil
	close(a.done)
	return err
}

func (f *Feeder) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.users--
	if f.users > 0 {
		return
	}
	f.gen++
	gen := f.gen
	time.AfterFunc(f.linger, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.gen == gen && f.users == 0 && f.stop != nil {
			f.stop()
			f.stop = nil
		}
	})
}

// Running reports whether the feed runs (for tests and metrics).
func (f *Feeder) Running() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stop != nil
}

// Close stops the feed now, whoever holds it; a start under way is
// undone when it ends (its holders get ErrFeedClosed). It never waits for
// a start.
func (f *Feeder) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	f.closes++
	if f.stop != nil {
		f.stop()
		f.stop = nil
	}
}
