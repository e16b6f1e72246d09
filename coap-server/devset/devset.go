// Package devset keeps a set of device IDs read from a table in memory:
// the devices that have DTLS credentials (device_credentials: plain CoAP
// may not speak for them) and, with AUTO_REGISTER=false, the registered
// devices (devices: an uplink for any other ID is refused). The datagram
// path asks it from memory and never waits on the database; the set is
// re-read every Interval and kept in a file under DATA_DIR, so a restart
// while the database is down still knows it.
package devset

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Lister reads every device ID of the set from the database.
type Lister func(ctx context.Context) ([]string, error)

// MaxIDs bounds the list read from the database (operator data, not
// outside input): a million IDs of at most 64 bytes, under 100 MB with the
// map; the 512 MB reference machine holds far fewer devices. A longer
// list is refused whole (ErrTooMany), never cut.
const MaxIDs = 1_000_000

// ErrTooMany: the table has more than MaxIDs devices. The set keeps its
// last list (none at a first start: the uplinks it decides get 5.03).
var ErrTooMany = errors.New("too many devices for this server")

// DefaultInterval is how often the list is re-read: a new or deleted row
// takes effect within it.
const DefaultInterval = 5 * time.Second

// Set is one table's device IDs. Its zero value is not usable: use New.
type Set struct {
	name     string // the table, for logs
	list     Lister
	interval time.Duration
	file     string
	log      *slog.Logger

	mu     sync.RWMutex
	ids    map[string]struct{}
	loaded bool

	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{} // RefreshSoon
}

// RefreshSoon makes the set read its list now rather than at the next
// interval: the table changed (coap-server hears of device_credentials
// changes by LISTEN in Postgres mode). Calls while one is due are one.
func (s *Set) RefreshSoon() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// New returns the set of table's IDs read by list every interval
// (0 = DefaultInterval), saved in dir (DATA_DIR; empty = no file). Start
// loads it.
func New(table string, list Lister, interval time.Duration, dir string, logger *slog.Logger) *Set {
	if interval <= 0 {
		interval = DefaultInterval
	}
	s := &Set{name: table, list: list, interval: interval, log: logger, done: make(chan struct{}), kick: make(chan struct{}, 1)}
	if dir != "" {
		s.file = filepath.Join(dir, fileName(table))
	}
	return s
}

// fileName keeps the name the credentialed list had before this package
// existed, so an upgrade during an outage still finds it.
func fileName(table string) string {
	if table == "device_credentials" {
		return "credentialed-devices.txt"
	}
	return table + ".txt"
}

// Start loads the list (from the database, else from the file) and keeps
// it fresh until Close. Until a list is known, Has reports unknown.
func (s *Set) Start(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := s.refresh(lctx)
	cancel()
	if err != nil {
		if ids, ferr := s.readFile(); ferr == nil {
			s.replace(ids)
			s.log.Warn(s.name+": cannot read the list from the database; using the list saved at the last refresh", "devices", len(ids), "err", err)
		} else {
			s.log.Warn(s.name+": cannot read the list from the database and no saved list; the uplinks it decides get 5.03 until it can", "err", err)
		}
	}
	ctx, s.cancel = context.WithCancel(context.Background())
	go s.loop(ctx)
}

func (s *Set) loop(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		rctx, cancel := context.WithTimeout(ctx, s.interval)
		err := s.refresh(rctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			failures++
			if failures == 1 || failures%60 == 0 {
				s.log.Warn(s.name+": refresh failed; keeping the last list", "err", err, "attempt", failures)
			}
		} else {
			failures = 0
		}
	}
}

func (s *Set) refresh(ctx context.Context) error {
	ids, err := s.list(ctx)
	if err != nil {
		return err
	}
	if len(ids) > MaxIDs {
		// A cut list would fail open for the credentialed set (plain CoAP
		// speaking for a keyed device left out): keep the last whole one.
		return fmt.Errorf("%w: %s has more than %d devices", ErrTooMany, s.name, MaxIDs)
	}
	if s.replace(ids) {
		s.writeFile(ids)
	}
	return nil
}

// replace installs ids and reports whether the set changed.
func (s *Set) replace(ids []string) bool {
	set := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		set[id] = struct{}{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := !s.loaded || len(set) != len(s.ids)
	if !changed {
		for id := range set {
			if _, ok := s.ids[id]; !ok {
				changed = true
				break
			}
		}
	}
	s.ids, s.loaded = set, true
	return changed
}

// Has reports whether device is in the set; known is false while no list
// has been loaded yet.
func (s *Set) Has(device string) (has, known bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, has = s.ids[device]
	return has, s.loaded
}

func (s *Set) writeFile(ids []string) {
	if s.file == "" {
		return
	}
	sorted := append([]string(nil), ids...)
	sort.Strings(sorted)
	// A temporary file of its own, synced, then renamed over the old:
	// instances sharing DATA_DIR (NATS_URL) write at the same time.
	_ = renameio.WriteFile(s.file, []byte(strings.Join(sorted, "\n")+"\n"), 0o600)
}

func (s *Set) readFile() ([]string, error) {
	if s.file == "" {
		return nil, os.ErrNotExist
	}
	f, err := os.Open(s.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	for sc.Scan() && len(ids) < MaxIDs {
		if id := sc.Text(); livelog.ValidDeviceID(id) {
			ids = append(ids, id)
		}
	}
	return ids, sc.Err()
}

// Close stops the refresh; it is idempotent.
func (s *Set) Close() {
	if s.cancel != nil {
		s.cancel()
		<-s.done
		s.cancel = nil
	}
}
