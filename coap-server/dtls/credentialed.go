package dtls

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// Lister lists the devices that have a row in device_credentials.
type Lister interface {
	ListCredentialed(ctx context.Context) ([]string, error)
}

// maxCredentialed bounds the list read from the database (operator data,
// not outside input): a million IDs of at most 64 bytes.
const maxCredentialed = 1_000_000

// ListCredentialed implements Lister over Postgres.
func (p PGKeys) ListCredentialed(ctx context.Context) ([]string, error) {
	rows, err := p.Pool.Query(ctx, `select devid from public.device_credentials order by devid limit $1`, maxCredentialed)
	if err != nil {
		return nil, fmt.Errorf("device_credentials: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("device_credentials: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// ListCredentialed implements Lister over Supabase REST, paging by devid
// (Supabase caps each response at its max rows without an error).
func (r RESTKeys) ListCredentialed(ctx context.Context) ([]string, error) {
	var ids []string
	last := ""
	for len(ids) < maxCredentialed {
		q := url.Values{"select": {"devid"}, "order": {"devid.asc"}, "limit": {"1000"}}
		if last != "" {
			q.Set("devid", "gt."+last)
		}
		var page []struct {
			DevID string `json:"devid"`
		}
		if err := r.get(ctx, q, 1<<20, &page); err != nil {
			return nil, err
		}
		if len(page) == 0 {
			return ids, nil
		}
		for _, p := range page {
			ids = append(ids, p.DevID)
		}
		last = page[len(page)-1].DevID
	}
	return ids, nil
}

// Credentialed is the set of devices that must authenticate with DTLS: a
// plain-CoAP uplink naming one is refused with 4.01, so nobody can speak for
// a device that has a key. It answers from memory (the datagram path never
// waits on the database), re-reads the list every Interval, and keeps the
// last list in a file so a restart while the database is down still knows
// it.
type Credentialed struct {
	l        Lister
	interval time.Duration
	file     string
	log      *slog.Logger

	mu     sync.RWMutex
	set    map[string]struct{}
	loaded bool

	cancel context.CancelFunc
	done   chan struct{}
}

// DefaultCredentialedInterval is how often the list is re-read: a new or
// deleted credential takes effect within it.
const DefaultCredentialedInterval = 5 * time.Second

// NewCredentialed returns the set over l, cached in dir (DATA_DIR; empty =
// no file). Start loads it.
func NewCredentialed(l Lister, interval time.Duration, dir string, logger *slog.Logger) *Credentialed {
	if interval <= 0 {
		interval = DefaultCredentialedInterval
	}
	c := &Credentialed{l: l, interval: interval, log: logger, done: make(chan struct{})}
	if dir != "" {
		c.file = filepath.Join(dir, "credentialed-devices.txt")
	}
	return c
}

// Start loads the list (from the database, else from the file) and keeps
// it fresh until Close. Until a list is known, Requires reports unknown.
func (c *Credentialed) Start(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := c.refresh(lctx)
	cancel()
	if err != nil {
		if ids, ferr := c.readFile(); ferr == nil {
			c.replace(ids)
			c.log.Warn("credentialed devices: database unreachable; using the list saved at the last refresh", "devices", len(ids), "err", err)
		} else {
			c.log.Warn("credentialed devices: database unreachable and no saved list; plain-CoAP uplinks get 5.03 until it answers", "err", err)
		}
	}
	ctx, c.cancel = context.WithCancel(context.Background())
	go c.loop(ctx)
}

func (c *Credentialed) loop(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(c.interval)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, c.interval)
		err := c.refresh(rctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			failures++
			if failures == 1 || failures%60 == 0 {
				c.log.Warn("credentialed devices: refresh failed; keeping the last list", "err", err, "attempt", failures)
			}
		} else {
			failures = 0
		}
	}
}

func (c *Credentialed) refresh(ctx context.Context) error {
	ids, err := c.l.ListCredentialed(ctx)
	if err != nil {
		return err
	}
	if c.replace(ids) {
		c.writeFile(ids)
	}
	return nil
}

// replace installs ids and reports whether the set changed.
func (c *Credentialed) replace(ids []string) bool {
	set := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		set[id] = struct{}{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := !c.loaded || len(set) != len(c.set)
	if !changed {
		for id := range set {
			if _, ok := c.set[id]; !ok {
				changed = true
				break
			}
		}
	}
	c.set, c.loaded = set, true
	return changed
}

// Requires reports whether device has credentials; known is false while no
// list has been loaded yet.
func (c *Credentialed) Requires(device string) (required, known bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, required = c.set[device]
	return required, c.loaded
}

func (c *Credentialed) writeFile(ids []string) {
	if c.file == "" {
		return
	}
	sorted := append([]string(nil), ids...)
	sort.Strings(sorted)
	tmp := c.file + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(sorted, "\n")+"\n"), 0o600); err == nil {
		_ = os.Rename(tmp, c.file)
	}
}

func (c *Credentialed) readFile() ([]string, error) {
	if c.file == "" {
		return nil, os.ErrNotExist
	}
	f, err := os.Open(c.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	for sc.Scan() && len(ids) < maxCredentialed {
		if id := sc.Text(); livelog.ValidDeviceID(id) {
			ids = append(ids, id)
		}
	}
	return ids, sc.Err()
}

// Close stops the refresh; it is idempotent.
func (c *Credentialed) Close() {
	if c.cancel != nil {
		c.cancel()
		<-c.done
		c.cancel = nil
	}
}

// OpenCredentialed starts the credentialed-device set over src, cached in
// dir, and returns it with a function that stops it and releases its pool.
func OpenCredentialed(ctx context.Context, src Source, dir string, logger *slog.Logger) (*Credentialed, func(), error) {
	var (
		l       Lister
		release = func() {}
	)
	switch {
	case src.DatabaseURL != "":
		pool, err := supa.NewPool(ctx, src.DatabaseURL, supa.PoolOptions{MaxConns: 1})
		if err != nil {
			return nil, nil, err
		}
		l, release = PGKeys{Pool: pool}, pool.Close
	case src.SupabaseURL != "":
		l = RESTKeys{BaseURL: src.SupabaseURL, ServiceKey: src.ServiceKey, Client: supa.RESTClient()}
	default:
		return nil, nil, fmt.Errorf("COAPS_ADDR: device keys need DATABASE_URL or SUPABASE_URL")
	}
	c := NewCredentialed(l, 0, dir, logger)
	c.Start(ctx)
	return c, func() { c.Close(); release() }, nil
}
