package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// Writer writes the rows of one batch. Every statement must be idempotent
// (keyed by uplink_id or device ID), because a batch is written again after
// any failure, including one that happened after the database committed.
// A writer returns an error wrapping ErrRejected only when the database
// refused the rows for good; anything else is retried.
type Writer interface {
	Write(ctx context.Context, rows *Rows) error
}

// Defaults of Options. The queue size is the app's STORAGE_QUEUE_SIZE.
const (
	DefaultSize         = 100_000
	DefaultBatchSize    = 500
	DefaultBatchAge     = 50 * time.Millisecond
	DefaultWorkers      = 2
	DefaultWriteTimeout = 15 * time.Second
)

// Options configures a Queue; zero fields take the defaults.
type Options struct {
	// Size bounds the uplinks waiting (default 100,000: at ~1 KiB each
	// about 100 MiB, and at 1,000 uplinks/s 100 s of database outage).
	Size int
	// BatchSize bounds the uplinks per batch (default 500: large enough for
	// bulk statements to pay off, small enough for a batch to take ~10 ms).
	BatchSize int
	// BatchAge is how long a worker waits to fill a batch (default 50 ms,
	// the most a stored row lags its uplink on an idle server).
	BatchAge time.Duration
	// Workers is the number of concurrent batch writers (default 2, one per
	// core here; the writers' pools are sized to match).
	Workers int
	// WriteTimeout bounds one write attempt (default 15 s), so a hung
	// connection becomes a retry instead of a stuck worker.
	WriteTimeout time.Duration
	// NewBackOff makes the retry policy of one batch (default exponential
	// from 100 ms to 5 s with no end: MaxElapsedTime 0, NOTES).
	NewBackOff func() backoff.BackOff
	// Logger takes the queue's logs (default: discard).
	Logger *slog.Logger
	// Registerer takes the metrics (default: a private registry).
	Registerer prometheus.Registerer
}

// Queue is a bounded queue of accepted uplinks in front of a Writer.
// Enqueue never blocks; batching workers write with bulk statements and
// retry failures with backoff until they succeed, so a database that is
// down only makes the queue grow.
type Queue struct {
	w   Writer
	o   Options
	log *slog.Logger
	m   *Metrics

	mu     sync.RWMutex // guards closed against close(ch) racing Enqueue
	closed bool
	ch     chan Record

	ctx       context.Context // cancelled when Close gives up
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// NewQueue starts the workers of a queue writing to w.
func NewQueue(w Writer, o Options) *Queue {
	if o.Size <= 0 {
		o.Size = DefaultSize
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.BatchAge <= 0 {
		o.BatchAge = DefaultBatchAge
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.NewBackOff == nil {
		o.NewBackOff = DefaultBackOff
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	q := &Queue{w: w, o: o, log: o.Logger, ch: make(chan Record, o.Size), done: make(chan struct{})}
	q.m = newMetrics(o.Registerer, func() float64 { return float64(len(q.ch)) }, o.Size)
	q.ctx, q.cancel = context.WithCancel(context.Background())
	for range o.Workers {
		q.wg.Add(1)
		go q.worker()
	}
	go func() { q.wg.Wait(); close(q.done) }()
	return q
}

// DefaultBackOff retries forever: exponential from 100 ms to 5 s, no
// maximum elapsed time (backoff's default of 15 min would drop uplinks).
func DefaultBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0
	return b
}

// Metrics returns the queue's counters (for tests and the app).
func (q *Queue) Metrics() *Metrics { return q.m }

// Len is the number of uplinks waiting.
func (q *Queue) Len() int { return len(q.ch) }

// Enqueue takes r without blocking. It returns ErrQueueFull when the queue
// holds Options.Size uplinks and ErrClosed after Close.
func (q *Queue) Enqueue(r Record) error {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return ErrClosed
	}
	select {
	case q.ch <- r:
		q.m.Enqueued.Inc()
		return nil
	default:
		q.m.QueueFull.Inc()
		return ErrQueueFull
	}
}

// Close stops taking uplinks and writes what is queued, retrying as usual,
// until ctx ends; then it abandons the rest, counts it in
// nbiot_storage_unstored_total and says how many in the error. It is
// idempotent: later calls wait for the same outcome.
func (q *Queue) Close(ctx context.Context) error {
	q.closeOnce.Do(func() {
		q.mu.Lock()
		q.closed = true
		close(q.ch)
		q.mu.Unlock()
		select {
		case <-q.done:
		case <-ctx.Done():
			before := counterValue(q.m.Unstored)
			q.cancel() // ends retries; workers count what remains as unstored
			<-q.done
			if lost := counterValue(q.m.Unstored) - before; lost > 0 {
				q.closeErr = fmt.Errorf("storage: drain deadline passed, %.0f uplinks not stored: %w", lost, ctx.Err())
			}
		}
		q.cancel()
	})
	select {
	case <-q.done:
		return q.closeErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (q *Queue) worker() {
	defer q.wg.Done()
	batch := make([]Record, 0, q.o.BatchSize)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		r, ok := <-q.ch
		if !ok {
			return
		}
		batch = append(batch[:0], r)
		batch = q.fill(batch, timer)
		q.store(batch)
	}
}

// fill adds queued records to batch until it is full, BatchAge has passed,
// or the queue is closed and empty.
func (q *Queue) fill(batch []Record, timer *time.Timer) []Record {
	timer.Reset(q.o.BatchAge)
	defer timer.Stop()
	for len(batch) < q.o.BatchSize {
		select {
		case r, ok := <-q.ch:
			if !ok {
				return batch
			}
			batch = append(batch, r)
		case <-timer.C:
			return batch
		}
	}
	return batch
}

// store writes recs, retrying until it succeeds. When the database rejects
// the batch for good, it is split in halves until the offending uplink is
// alone; that one is logged with its uplink_id and skipped, so one poison
// row never holds back the rows behind it.
func (q *Queue) store(recs []Record) {
	err := q.writeRetry(recs)
	switch {
	case err == nil:
	case errors.Is(err, ErrRejected) && len(recs) > 1:
		mid := len(recs) / 2
		q.store(recs[:mid])
		q.store(recs[mid:])
	case errors.Is(err, ErrRejected):
		q.m.Rejected.Inc()
		q.log.Error("uplink not stored: rejected by the database", "uplink_id", recs[0].ID.String(), "device", recs[0].DeviceID, "err", err)
	default:
		// Only when Close gave up: the retry context is cancelled.
		q.m.Unstored.Add(float64(len(recs)))
		q.log.Error("uplinks not stored: shutdown deadline passed", "count", len(recs), "err", err)
	}
}

func (q *Queue) writeRetry(recs []Record) error {
	rows := RowsOf(recs)
	attempt := 0
	op := func() error {
		if err := q.ctx.Err(); err != nil {
			return backoff.Permanent(err)
		}
		attempt++
		ctx, cancel := context.WithTimeout(q.ctx, q.o.WriteTimeout)
		defer cancel()
		start := time.Now()
		err := q.w.Write(ctx, &rows)
		q.m.BatchTime.Observe(time.Since(start).Seconds())
		switch {
		case err == nil:
			q.m.Stored.Add(float64(len(recs)))
			q.m.Rows.Add(float64(rows.Count()))
			if attempt > 1 {
				q.log.Info("storage recovered", "uplinks", len(recs), "attempts", attempt)
			}
			return nil
		case errors.Is(err, ErrRejected):
			return backoff.Permanent(err)
		}
		q.m.WriteErrors.Inc()
		if attempt == 1 || attempt%10 == 0 {
			q.log.Warn("storage write failed; retrying", "uplinks", len(recs), "attempt", attempt, "queued", len(q.ch), "err", err)
		}
		return err
	}
	return backoff.Retry(op, backoff.WithContext(q.o.NewBackOff(), q.ctx))
}
