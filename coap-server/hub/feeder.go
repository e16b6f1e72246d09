package hub

import (
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

	mu    sync.Mutex
	users int
	stop  func() // nil when not running
	gen   uint64 // of the last release that scheduled a stop
}

// NewFeeder returns a Feeder that starts the feed with start; linger 0 is
// DefaultLinger.
func NewFeeder(start func() (stop func(), err error), linger time.Duration) *Feeder {
	if linger <= 0 {
		linger = DefaultLinger
	}
	return &Feeder{start: start, linger: linger}
}

// Hold starts the feed unless it is running and keeps it running until
// release is called (once). The error is start's.
func (f *Feeder) Hold() (release func(), err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stop == nil {
		stop, err := f.start()
		if err != nil {
			return nil, err
		}
		f.stop = stop
	}
	f.users++
	f.gen++ // a stop scheduled before now is void
	var once sync.Once
	return func() { once.Do(f.release) }, nil
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

// Close stops the feed now, whoever holds it.
func (f *Feeder) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	if f.stop != nil {
		f.stop()
		f.stop = nil
	}
}
