package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
)

// Writer writes the rows of one batch. Every statement must be idempotent
// (keyed by uplink_id or device ID), because a batch is written again after
// any failure, including one that happened after the database committed,
// and a batch whose acknowledgement was lost is delivered again. A writer
// returns an error wrapping ErrRejected only when the database refused the
// rows for good; anything else is retried.
type Writer interface {
	Write(ctx context.Context, rows *Rows) error
}

// Source is the durable stream of accepted uplinks (the stream package's
// storage consumer, shared by every instance).
type Source interface {
	// Fetch returns up to max deliveries, waiting at most wait for the
	// first; an empty batch is no error. Deliveries returned with an
	// error (taken before the fetch failed) are stored all the same.
	Fetch(ctx context.Context, max int, wait time.Duration) ([]Delivery, error)
}

// Delivery is one uplink from the stream and how to settle it. An uplink
// is acknowledged only after the database committed its rows (or refused
// them for good); an unacknowledged one is delivered again, to this or
// another instance, after the stream's ack wait.
type Delivery struct {
	Accepted uplink.Accepted
	// Ack removes the uplink from the stream.
	Ack func() error
	// InProgress extends the ack wait while a write is retried.
	InProgress func() error
	// Nak hands the uplink back for delivery at once (shutdown).
	Nak func() error
}

// Defaults of Options.
const (
	DefaultBatchSize    = 500
	DefaultBatchAge     = 200 * time.Millisecond
	DefaultWorkers      = 2
	DefaultWriteTimeout = 15 * time.Second
	// DefaultHeartbeat is how often a retried batch tells the stream it is
	// still being worked on: well inside the consumer's one-minute ack wait.
	DefaultHeartbeat = 15 * time.Second
)

// Options configures a Consumer; zero fields take the defaults.
type Options struct {
	// BatchSize bounds the uplinks per batch (default 500: large enough for
	// bulk statements to pay off, small enough for a batch to take ~10 ms).
	BatchSize int
	// BatchAge is how long a fetch waits to fill a batch (default 200 ms,
	// the most a stored row lags its uplink on an idle server). Each write
	// is a burst of CPU (the rows, pgx, the database, the acknowledgements)
	// that the datagram path waits behind on a small machine: at 1,000
	// uplinks/s with Postgres on the same 2 cores, the CoAP p99 was
	// 1.9-2.6 ms with 20 writes a second (50 ms) and 1.3-1.5 ms with 5
	// (200 ms), for the same CPU (coapbench -rate 1000).
	BatchAge time.Duration
	// Workers is the number of concurrent batch writers (default 2, one per
	// core here; the writers' pools are sized to match).
	Workers int
	// WriteTimeout bounds one write attempt (default 15 s), so a hung
	// connection becomes a retry instead of a stuck worker.
	WriteTimeout time.Duration
	// Heartbeat is how often a batch being retried is marked in progress
	// (default 15 s; a quarter of the stream's redelivery time).
	Heartbeat time.Duration
	// NewBackOff makes the retry policy of one batch (default exponential
	// from 100 ms to 5 s with no end: MaxElapsedTime 0).
	NewBackOff func() backoff.BackOff
	// Logger takes the consumer's logs (default: discard).
	Logger *slog.Logger
	// Registerer takes the metrics (default: a private registry).
	Registerer prometheus.Registerer
}

// Consumer writes the uplinks of a Source to a Writer in batches: fetch
// many, write them in one round trip, acknowledge them all. Failures are
// retried with backoff until they succeed, so a database that is down only
// makes the stream grow; nothing is lost when the process dies, because
// what was not acknowledged is delivered again.
type Consumer struct {
	src Source
	w   Writer
	o   Options
	log *slog.Logger
	m   *Metrics

	fetchCtx  context.Context // ends on Close: no new batches
	stopFetch context.CancelFunc
	writeCtx  context.Context // ends when Close gives up on a batch
	stopWrite context.CancelFunc
	wg        sync.WaitGroup
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// DefaultBackOff retries forever: exponential from 100 ms to 5 s, no
// maximum elapsed time (backoff's default of 15 min would give up).
func DefaultBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0
	return b
}

// NewConsumer starts the workers of a consumer writing src to w.
func NewConsumer(src Source, w Writer, o Options) *Consumer {
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
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	c := &Consumer{src: src, w: w, o: o, log: o.Logger, m: newMetrics(o.Registerer), done: make(chan struct{})}
	c.fetchCtx, c.stopFetch = context.WithCancel(context.Background())
	c.writeCtx, c.stopWrite = context.WithCancel(context.Background())
	for range o.Workers {
		c.wg.Add(1)
		go c.worker()
	}
	go func() { c.wg.Wait(); close(c.done) }()
	return c
}

// Metrics returns the consumer's counters (for tests and the app).
func (c *Consumer) Metrics() *Metrics { return c.m }

// Close stops fetching and lets the batches being written finish until
// ctx ends; then it abandons them. Nothing is lost either way: what was
// not acknowledged stays in the stream for the next start or another
// instance. It is idempotent.
func (c *Consumer) Close(ctx context.Context) error {
	c.closeOnce.Do(func() {
		c.stopFetch()
		select {
		case <-c.done:
		case <-ctx.Done():
			c.stopWrite()
			<-c.done
			c.log.Warn("storage: shutdown deadline passed with a batch being written; it stays in the stream and is written at the next start")
		}
		c.stopWrite()
	})
	<-c.done
	return c.closeErr
}

func (c *Consumer) worker() {
	defer c.wg.Done()
	b := c.o.NewBackOff()
	failures := 0
	for c.fetchCtx.Err() == nil {
		ds, err := c.src.Fetch(c.fetchCtx, c.o.BatchSize, c.o.BatchAge)
		if len(ds) > 0 {
			// Also when the fetch failed after taking them: left alone
			// they would wait for the stream's redelivery (a minute).
			c.store(ds)
		}
		if err != nil {
			if c.fetchCtx.Err() != nil {
				return
			}
			failures++
			c.m.FetchErrors.Inc()
			if failures == 1 || failures%20 == 0 {
				c.log.Warn("storage: cannot fetch from the uplink stream; retrying", "attempt", failures, "err", err)
			}
			sleep(c.fetchCtx, b.NextBackOff())
			continue
		}
		failures = 0
		b.Reset()
	}
}

// store writes ds, retrying until it succeeds, and acknowledges them.
// When the database rejects the batch for good, it is split in halves
// until the offending uplink is alone; that one is logged with its
// uplink_id, acknowledged and skipped, so one poison row never holds back
// the rows behind it.
func (c *Consumer) store(ds []Delivery) {
	err := c.writeRetry(ds)
	switch {
	case err == nil:
		c.ack(ds)
	case errors.Is(err, ErrRejected) && len(ds) > 1:
		mid := len(ds) / 2
		c.store(ds[:mid])
		c.store(ds[mid:])
	case errors.Is(err, ErrRejected):
		c.m.Rejected.Inc()
		r := ds[0].Accepted
		c.log.Error("uplink not stored: rejected by the database", "uplink_id", r.ID.String(), "device", r.DeviceID, "err", err)
		c.ack(ds)
	default:
		// Only when Close gave up, or a write failed during it: handed
		// back, delivered again at once to another instance or the next
		// start.
		c.m.Abandoned.Add(float64(len(ds)))
		for _, d := range ds {
			_ = d.Nak()
		}
		if errors.Is(err, errShuttingDown) {
			c.log.Warn("storage: shutting down with the database failing; the batch stays in the stream for the next start", "uplinks", len(ds), "err", err)
		}
	}
}

func (c *Consumer) ack(ds []Delivery) {
	for _, d := range ds {
		if err := d.Ack(); err != nil {
			// The rows are committed; a redelivery rewrites them idempotently.
			c.m.AckErrors.Inc()
		}
	}
}

// errShuttingDown marks a write that failed while Close drains.
var errShuttingDown = errors.New("storage: shutting down")

func (c *Consumer) writeRetry(ds []Delivery) error {
	recs := make([]uplink.Accepted, len(ds))
	for i, d := range ds {
		recs[i] = d.Accepted
	}
	rows := RowsOf(recs)
	attempt := 0
	lastBeat := time.Now()
	op := func() error {
		if err := c.writeCtx.Err(); err != nil {
			return backoff.Permanent(err)
		}
		attempt++
		if time.Since(lastBeat) >= c.o.Heartbeat {
			for _, d := range ds {
				_ = d.InProgress()
			}
			lastBeat = time.Now()
		}
		ctx, cancel := context.WithTimeout(c.writeCtx, c.o.WriteTimeout)
		defer cancel()
		start := time.Now()
		err := c.w.Write(ctx, &rows)
		c.m.BatchTime.Observe(time.Since(start).Seconds())
		switch {
		case err == nil:
			c.m.Stored.Add(float64(len(ds)))
			c.m.Rows.Add(float64(rows.Count()))
			if attempt > 1 {
				c.log.Info("storage recovered", "uplinks", len(ds), "attempts", attempt)
			}
			return nil
		case errors.Is(err, ErrRejected):
			return backoff.Permanent(err)
		}
		c.m.WriteErrors.Inc()
		if c.fetchCtx.Err() != nil {
			// Shutting down: the batch is in the stream, which gives it to
			// the next start (at once, embedded) or another instance, so a
			// stop during an outage need not wait out its drain time.
			return backoff.Permanent(fmt.Errorf("%w: %w", errShuttingDown, err))
		}
		if attempt == 1 || attempt%10 == 0 {
			c.log.Warn("storage write failed; retrying (the uplinks wait in the stream)", "uplinks", len(ds), "attempt", attempt, "err", err)
		}
		return err
	}
	return backoff.Retry(op, backoff.WithContext(c.o.NewBackOff(), c.writeCtx))
}

func sleep(ctx context.Context, d time.Duration) {
	if d == backoff.Stop {
		d = 5 * time.Second
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
