package downlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Config configures the service. Zero fields take the defaults.
type Config struct {
	// MaxDevices (default 100000; no environment variable) bounds the devices
	// held in memory; a downlink beyond it is counted and not delivered
	// until the next reload finds room.
	MaxDevices int
	// PollInterval (DOWNLINK_POLL_INTERVAL_SECONDS, default 10 s) is how often REST
	// mode asks for new rows (Postgres mode is notified instead).
	PollInterval time.Duration
	// ReloadInterval (default 1 min, at least one PollInterval) is how often
	// REST mode reads every pending row instead of only those above the
	// largest id seen. An identity value is taken at insert but the row is
	// visible only at commit, so a transaction that commits after a later
	// one leaves a lower id behind the poll's mark; the reload delivers it
	// within this interval instead of at the next restart.
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
	// Sleep waits between retries (default: a timer honouring ctx).
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
	if cfg.MaxDevices <= 0 {
		cfg.MaxDevices = 100000
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
	st := NewStamper(store, cfg.Stamps, cfg.Metrics, cfg.Logger)
	cache := NewCache(cfg.MaxDevices, st, cfg.Metrics, cfg.Logger)
	cache.live, cache.now = cfg.Live, cfg.Now
	if cache.now == nil {
		cache.now = time.Now
	}
	return &Service{
		Cache: cache,
		store: store, stamps: st, metrics: cfg.Metrics, log: cfg.Logger,
		sleep: cfg.Sleep, poll: cfg.PollInterval, reload: cfg.ReloadInterval,
	}
}

// Reload puts every pending row of the store into the cache.
func (s *Service) Reload(ctx context.Context) error {
	rows, err := s.store.Pending(ctx)
	if err != nil {
		return fmt.Errorf("load pending downlinks: %w", err)
	}
	for _, r := range rows {
		s.Put(r)
	}
	return nil
}

// StartPG refreshes from Postgres: LISTEN on a dedicated connection to dsn
// (reloading on every connection). ready, if not nil, is called after each
// (re)load, for tests. It does not wait for the first load: the database
// may be down at start, and uplinks must be served anyway.
func (s *Service) StartPG(dsn string, pg PG, ready func()) {
	ctx := s.start()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.listenPG(ctx, dsn, pg, ready)
	}()
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
