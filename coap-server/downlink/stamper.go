package downlink

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Store is the database side of downlinks: Postgres (PG) or Supabase REST.
type Store interface {
	// Pending hands each, one row at a time, per device the newest row
	// when it is neither applied nor superseded (at most MaxPending rows).
	// Rows are streamed, not collected: a load holds what the cache keeps,
	// not every row read.
	Pending(ctx context.Context, each func(Row)) error
	// MarkSent stamps sent_at on row id (if unset) and superseded_at on the
	// device's older rows that were not applied.
	MarkSent(ctx context.Context, id int64, deviceID string, at time.Time) error
	// MarkApplied stamps applied_at on row id (if unset).
	MarkApplied(ctx context.Context, id int64, at time.Time) error
}

type stamp struct {
	id       int64
	deviceID string
	at       time.Time
	applied  bool
}

// StamperConfig bounds the stamp queue. Zero fields take the defaults.
type StamperConfig struct {
	// QueueSize (default 10000) bounds stamps waiting for the database.
	QueueSize int
	// Attempts (default 8) bounds the tries of one stamp; backoff doubles
	// from 200 ms up to 30 s between them (about 2 minutes in all).
	Attempts int
	// Timeout (default 5 s) bounds one write.
	Timeout time.Duration
	// Sleep waits between attempts (default: a timer honouring ctx); tests
	// inject it.
	Sleep func(ctx context.Context, d time.Duration)
}

func (c *StamperConfig) defaults() {
	if c.QueueSize <= 0 {
		c.QueueSize = 10000
	}
	if c.Attempts <= 0 {
		c.Attempts = 8
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Sleep == nil {
		c.Sleep = func(ctx context.Context, d time.Duration) {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
			case <-t.C:
			}
		}
	}
}

// Stamper writes sent_at/applied_at in the background, in order, so the
// CoAP answer never waits for the database. Enqueueing never blocks: when
// the queue is full the stamp is dropped and counted, and Sent or Applied
// returns false; a stamp that fails Attempts times is counted and handed
// to lost. Either way the cache queues it again at the next uplink that
// would have stamped it (a resend, or a report of the version).
type Stamper struct {
	cfg     StamperConfig
	store   Store
	metrics *Metrics
	log     *slog.Logger
	lost    func(id int64, deviceID string, applied bool)
	queue   chan stamp
	done    chan struct{}
	closing chan struct{}
	stop    context.CancelFunc
	once    sync.Once
	cut     atomic.Bool // a stamp was given up because Close stopped the writes
}

// NewStamper starts the writer goroutine; Close stops it. lost is told,
// from the writer goroutine, of each stamp given up after its attempts.
func NewStamper(store Store, cfg StamperConfig, m *Metrics, logger *slog.Logger, lost func(id int64, deviceID string, applied bool)) *Stamper {
	cfg.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Stamper{cfg: cfg, store: store, metrics: m, log: logger, lost: lost,
		queue: make(chan stamp, cfg.QueueSize), done: make(chan struct{}), closing: make(chan struct{}), stop: cancel}
	go s.run(ctx)
	return s
}

// Sent queues the sent_at stamp of row id; false: dropped, queue full.
func (s *Stamper) Sent(id int64, deviceID string, at time.Time) bool {
	return s.enqueue(stamp{id: id, deviceID: deviceID, at: at})
}

// Applied queues the applied_at stamp of row id; false: dropped, queue
// full.
func (s *Stamper) Applied(id int64, deviceID string, at time.Time) bool {
	return s.enqueue(stamp{id: id, deviceID: deviceID, at: at, applied: true})
}

// enqueue never calls back into the cache: the cache holds its lock while
// it enqueues, and learns of a drop from the result instead.
func (s *Stamper) enqueue(st stamp) bool {
	select {
	case s.queue <- st:
		return true
	default:
		s.metrics.Dropped.WithLabelValues("stamp_queue_full").Inc()
		s.log.Warn("downlink stamp dropped: queue full", "device", st.deviceID, "downlink_id", st.id)
		return false
	}
}

// Len is the number of stamps waiting.
func (s *Stamper) Len() int { return len(s.queue) }

func (s *Stamper) run(ctx context.Context) {
	defer close(s.done)
	for {
		select {
		case st := <-s.queue:
			s.write(ctx, st)
		case <-s.closing:
			for {
				select {
				case st := <-s.queue:
					s.write(ctx, st)
				default:
					return
				}
			}
		}
	}
}

func (s *Stamper) write(ctx context.Context, st stamp) {
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		wctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		var err error
		if st.applied {
			err = s.store.MarkApplied(wctx, st.id, st.at)
		} else {
			err = s.store.MarkSent(wctx, st.id, st.deviceID, st.at)
		}
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			s.cut.Store(true)
		}
		if attempt >= s.cfg.Attempts || ctx.Err() != nil {
			// lost first: whoever sees the count sees the cache told.
			s.lost(st.id, st.deviceID, st.applied)
			s.metrics.Dropped.WithLabelValues("stamp_failed").Inc()
			s.log.Error("downlink stamp failed", "device", st.deviceID, "downlink_id", st.id, "err", err)
			return
		}
		s.log.Warn("downlink stamp failed, retrying", "device", st.deviceID, "downlink_id", st.id, "err", err)
		s.cfg.Sleep(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

// Close writes what is queued, then stops the writer; when ctx ends first,
// the write under way is cancelled and the rest dropped. It is idempotent.
func (s *Stamper) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		close(s.closing)
		select {
		case <-s.done:
		case <-ctx.Done():
			s.stop()
			<-s.done
			// Only stamps given up are an error: with nothing queued a
			// ctx that ended already (another part's drain used it up)
			// cut nothing.
			if s.cut.Load() {
				err = ctx.Err()
			}
		}
		s.stop()
	})
	return err
}
