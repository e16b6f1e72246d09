package downlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/memlimit"
)

// cacheShare is the part of the process memory (memlimit.Bytes) the cache
// of downlinks takes by default: 1/32, 12.5 MiB at GOMEMLIMIT=400MiB, about
// 27,000 devices with a downlink of the largest config (three intervals
// and two 64-byte version strings: 485 B charged with a 10-byte device ID)
// or 59,000 with a typical one (two intervals: 222 B). Users insert the
// rows, so the bound is in bytes, like every bound on what outside
// parties can make the process hold.
const cacheShare = 32

// DefaultCacheBytes bounds the cache when Config.MaxBytes is zero: a
// thirty-second of memlimit.Bytes.
func DefaultCacheBytes() int64 { return memlimit.Bytes() / cacheShare }

// Config configures the service. Zero fields take the defaults.
type Config struct {
	// MaxBytes (default DefaultCacheBytes; no environment variable) bounds
	// the memory the downlinks held take, each entry charged its device ID,
	// encoded downlink and config strings plus a measured overhead. At the
	// bound, entries applied or not deliverable make room first; a
	// downlink beyond it is counted (cache_full) and not delivered until a
	// reload finds room.
	MaxBytes int64
	// PollInterval (DOWNLINK_POLL_INTERVAL_SECONDS, default 10 s) is how often REST
	// mode asks for new rows (Postgres mode is notified instead).
	PollInterval time.Duration
	// ReloadInterval (default 1 min; in REST mode at least one
	// PollInterval) is how often every pending row is read again. In REST
	// mode it replaces a poll for the rows above the largest id seen: an
	// identity value is taken at insert but the row is visible only at
	// commit, so a transaction that commits after a later one leaves a
	// lower id behind the poll's mark. In Postgres mode it runs beside
	// LISTEN: a row dropped as cache_full, or whose notification could not
	// be read, is delivered within this interval instead of at the next
	// reconnection or restart.
	ReloadInterval time.Duration
	// Stamps bounds the sent_at/applied_at writer.
	Stamps StamperConfig
	// Live, when not nil, receives a "queued" downlink entry each time the
	// service learns of a new pending row (load, NOTIFY or REST poll) that
	// was not sent yet. It must not block: it is called from the refresh
	// goroutine, never with a lock held. The "sent" and "applied" entries
	// are returned by ForUplink instead, so that they follow the uplink
	// entry that caused them.
	Live func(*livelog.Entry)
	// Now is the clock of the queued entries (default time.Now).
	Now func() time.Time
	// Metrics (required) and Logger (default discard).
	Metrics *Metrics
	Logger  *slog.Logger
	// Sleep waits between polls, reloads and retries (default: a timer
	// honouring ctx); tests inject it.
	Sleep func(ctx context.Context, d time.Duration)
}

// Service keeps pending downlinks fresh and answers uplinks from memory.
// It implements ingest.Downlinks through its embedded Cache.
type Service struct {
	*Cache
	store   Store
	stamps  *Stamper
	metrics *Metrics
	log     *slog.Logger
	sleep   func(ctx context.Context, d time.Duration)
	poll    time.Duration
	reload  time.Duration

	cancel  context.CancelFunc
	release func() // closes the pool Open made
	wg      sync.WaitGroup
	once    sync.Once
}

// New returns a service over store; Start loads and refreshes it.
func New(store Store, cfg Config) *Service {
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultCacheBytes()
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 10 * time.Second
	}
	if cfg.ReloadInterval <= 0 {
		cfg.ReloadInterval = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Stamps.defaults()
	if cfg.Sleep == nil {
		cfg.Sleep = cfg.Stamps.Sleep
	}
	cache := NewCache(cfg.MaxBytes, nil, cfg.Metrics, cfg.Logger)
	st := NewStamper(store, cfg.Stamps, cfg.Metrics, cfg.Logger, cache.stampLost)
	cache.stamps, cache.live, cache.now = st, cfg.Live, cfg.Now
	if cache.now == nil {
		cache.now = time.Now
	}
	return &Service{
		Cache: cache,
		store: store, stamps: st, metrics: cfg.Metrics, log: cfg.Logger,
		sleep: cfg.Sleep, poll: cfg.PollInterval, reload: cfg.ReloadInterval,
	}
}

// Reload puts every pending row of the store into the cache, as it reads
// them.
func (s *Service) Reload(ctx context.Context) error {
	if err := s.store.Pending(ctx, s.Put); err != nil {
		return fmt.Errorf("load pending downlinks: %w", err)
	}
	return nil
}

// StartPG refreshes from Postgres: LISTEN on a dedicated connection to dsn
// (reloading on every connection), and a reload every ReloadInterval.
// ready, if not nil, is called after each (re)load, for tests. It does not
// wait for the first load: the database may be down at start, and uplinks
// must be served anyway.
func (s *Service) StartPG(dsn string, pg PG, ready func()) {
	ctx := s.start()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.listenPG(ctx, dsn, pg, ready)
	}()
	go func() {
		defer s.wg.Done()
		s.reloadEvery(ctx, ready)
	}()
}

// reloadEvery reloads every ReloadInterval until ctx ends, connected to
// LISTEN or not: a notification names one row once, so a row it could not
// deliver (dropped as cache_full, or not read) waits for a reload.
func (s *Service) reloadEvery(ctx context.Context, ready func()) {
	for {
		s.sleep(ctx, s.reload)
		if ctx.Err() != nil {
			return
		}
		if err := s.Reload(ctx); err != nil {
			if ctx.Err() == nil {
				s.metrics.RefreshErrors.Inc()
				s.log.Warn("downlink reload failed", "err", err)
			}
			continue
		}
		if ready != nil {
			ready()
		}
	}
}

// StartPolling refreshes from a REST store: a full load (retried until it
// works), then every PollInterval the rows with a larger id, and every
// ReloadInterval all pending rows again.
func (s *Service) StartPolling(r *REST, ready func()) {
	ctx := s.start()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.pollREST(ctx, r, ready)
	}()
}

func (s *Service) start() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	return ctx
}

// Close stops refreshing and writes the queued stamps within ctx. It is
// idempotent.
func (s *Service) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		if e := s.stamps.Close(ctx); e != nil {
			err = errors.Join(err, fmt.Errorf("downlink stamps: %w", e))
		}
		if s.release != nil {
			s.release()
		}
	})
	return err
}

// Stamps is the number of stamps waiting to be written.
func (s *Service) Stamps() int { return s.stamps.Len() }
