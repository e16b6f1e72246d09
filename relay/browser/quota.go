package browser

import (
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/nbiot-live/nbiot-live/internal/memlimit"
)

// Quotas bound what one user (the token's sub) and one client address
// (ClientIP) may hold of the relay, so that no single party exhausts the
// relay-wide MaxConnections, the upstream's watched-device cap or the
// access checks everyone needs. A refused request gets 429 and is counted
// in nbiot_relay_rejected_total{reason="user_limit"|"ip_limit"|"check_rate"}.
// The zero value of a field takes its default.
type Quotas struct {
	// UserConnections (MAX_CONNECTIONS_PER_USER, default 20) bounds one
	// user's open connections: a person has a few tabs open, not dozens.
	UserConnections int
	// UserDevices (MAX_DEVICES_PER_USER, default 10) bounds the distinct
	// devices one user watches at once: each is an upstream link counted
	// against MAX_WATCHED_DEVICES (default 1000), which 100 users then
	// cannot exhaust between them at this default.
	UserDevices int
	// IPConnections (MAX_CONNECTIONS_PER_IP, default 200) and IPDevices
	// (MAX_DEVICES_PER_IP, default 100) are ten times the per-user ones:
	// an office or a carrier NAT puts many users behind one address.
	IPConnections int
	IPDevices     int
	// UserChecksPerMinute (ACCESS_CHECKS_PER_MINUTE_PER_USER, default 60,
	// burst a sixth of it, at least 1) bounds one user's access checks that
	// miss the cache and so cost a database or REST query. Reconnects hit
	// the cache (allowed answers are kept 30 s); a user opening a few
	// devices stays far inside it, while a flood of random deviceIds is
	// held to one query a second.
	UserChecksPerMinute int
	// IPChecksPerMinute (ACCESS_CHECKS_PER_MINUTE_PER_IP, default 300,
	// burst a sixth) is the same per client address: checks only follow a
	// valid token, so this one stops one address cycling through accounts.
	IPChecksPerMinute int
	// MaxKeys bounds the users and addresses tracked, each table apart.
	// Default DefaultMaxKeys of the process's memory; idle entries (no
	// connection, a full check budget) are dropped to make room, and a
	// new key finding no room is refused.
	MaxKeys int
}

// KeyBytes is what one tracked user or address is charged: its key, its
// tally and check budget, measured at 190–230 B with no connection open (a
// spent budget keeps it: GET /devices with fresh tokens from fresh
// addresses). The devices an open connection adds are the connection's
// (MAX_CONNECTIONS), and a tally's map of them shrinks when they close.
const KeyBytes = 256

// DefaultMaxKeys is MaxKeys' default: as many keys as a 128th of memory
// holds at KeyBytes, for each table (12,800 at GOMEMLIMIT=400MiB, so both
// tables take at most 3.1 MiB each, and one per connection fits at the
// default MAX_CONNECTIONS), at least 1024.
func DefaultMaxKeys(memory int64) int {
	return int(max(memory/128/KeyBytes, 1024))
}

func (q Quotas) withDefaults() Quotas {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&q.UserConnections, 20)
	def(&q.UserDevices, 10)
	def(&q.IPConnections, 200)
	def(&q.IPDevices, 100)
	def(&q.UserChecksPerMinute, 60)
	def(&q.IPChecksPerMinute, 300)
	def(&q.MaxKeys, DefaultMaxKeys(memlimit.Bytes()))
	return q
}

// tally is what one user or one address holds.
type tally struct {
	conns   int
	devices map[string]int // device -> open connections on it; nil when none
	peak    int            // the most devices since the map was made
	checks  *rate.Limiter
}

type table struct {
	conns, devices int
	perMin         int
	m              map[string]*tally
	lastPrune      time.Time
}

func (t *table) limiter() *rate.Limiter {
	burst := max(t.perMin/6, 1)
	return rate.NewLimiter(rate.Limit(float64(t.perMin)/60), burst)
}

// get returns key's tally, creating it if there is room; nil when the
// table is full of busy keys.
func (t *table) get(key string, max int, now time.Time) *tally {
	if e, ok := t.m[key]; ok {
		return e
	}
	if len(t.m) >= max {
		if now.Sub(t.lastPrune) < time.Second {
			return nil // pruning is O(keys): at most once a second
		}
		t.lastPrune = now
		for k, e := range t.m {
			if e.conns == 0 && e.checks.TokensAt(now) >= float64(e.checks.Burst()) {
				delete(t.m, k)
			}
		}
		if len(t.m) >= max {
			return nil
		}
	}
	e := &tally{checks: t.limiter()}
	t.m[key] = e
	return e
}

// fits reports whether e may open one more connection on device.
func (t *table) fits(e *tally, device string) bool {
	if e.conns >= t.conns {
		return false
	}
	_, watching := e.devices[device]
	return watching || len(e.devices) < t.devices
}

func (t *table) add(e *tally, device string) {
	e.conns++
	if e.devices == nil {
		e.devices = make(map[string]int)
	}
	e.devices[device]++
	e.peak = max(e.peak, len(e.devices))
}

func (t *table) remove(key, device string, now time.Time) {
	e, ok := t.m[key]
	if !ok {
		return
	}
	e.conns--
	if n, ok := e.devices[device]; ok && n > 1 {
		e.devices[device] = n - 1
	} else if ok {
		delete(e.devices, device)
		e.shrink()
	}
	if e.conns <= 0 && e.checks.TokensAt(now) >= float64(e.checks.Burst()) {
		delete(t.m, key)
	}
}

// shrink lets go of a map of devices much larger than what it holds: a
// Go map keeps its buckets when entries leave, so an address that once
// watched MAX_DEVICES_PER_IP devices and keeps one connection open would
// keep 3.7 KB (measured) for as long as that connection lasts.
func (e *tally) shrink() {
	n := len(e.devices)
	switch {
	case n == 0:
		e.devices, e.peak = nil, 0
	case e.peak >= 16 && n <= e.peak/4:
		m := make(map[string]int, n)
		for d, c := range e.devices {
			m[d] = c
		}
		e.devices, e.peak = m, n
	}
}

// quota enforces Quotas. It is safe for concurrent use.
type quota struct {
	mu      sync.Mutex
	maxKeys int
	users   table
	ips     table
	now     func() time.Time
}

func newQuota(q Quotas, now func() time.Time) *quota {
	q = q.withDefaults()
	return &quota{
		maxKeys: q.MaxKeys,
		users:   table{conns: q.UserConnections, devices: q.UserDevices, perMin: q.UserChecksPerMinute, m: map[string]*tally{}},
		ips:     table{conns: q.IPConnections, devices: q.IPDevices, perMin: q.IPChecksPerMinute, m: map[string]*tally{}},
		now:     now,
	}
}

// acquire reserves one connection on device for user (may be "" with
// AUTH_DISABLED) and ip; it returns "" or the reason it was refused.
func (q *quota) acquire(user, ip, device string) string {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	var u *tally
	if user != "" {
		if u = q.users.get(user, q.maxKeys, now); u == nil || !q.users.fits(u, device) {
			return RejectUserLimit
		}
	}
	a := q.ips.get(ip, q.maxKeys, now)
	if a == nil || !q.ips.fits(a, device) {
		return RejectIPLimit
	}
	if u != nil {
		q.users.add(u, device)
	}
	q.ips.add(a, device)
	return ""
}

// release returns what acquire reserved.
func (q *quota) release(user, ip, device string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	if user != "" {
		q.users.remove(user, device, now)
	}
	q.ips.remove(ip, device, now)
}

// allowQuery spends one of user's and ip's access-check budgets on a query
// made for them outside a connection (GET /devices); false when either is
// spent, or when a table has no room for a new key.
func (q *quota) allowQuery(user, ip string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	a := q.ips.get(ip, q.maxKeys, now)
	if a == nil || !a.checks.AllowN(now, 1) {
		return false
	}
	if user == "" {
		return true
	}
	u := q.users.get(user, q.maxKeys, now)
	return u != nil && u.checks.AllowN(now, 1)
}

// allowCheck spends one uncached access check of user's and ip's budgets;
// false when either is spent. Only called after acquire, so both exist.
func (q *quota) allowCheck(user, ip string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	if e, ok := q.ips.m[ip]; ok && !e.checks.AllowN(now, 1) {
		return false
	}
	if e, ok := q.users.m[user]; ok && user != "" && !e.checks.AllowN(now, 1) {
		return false
	}
	return true
}
