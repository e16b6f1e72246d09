package browser

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// AccessRevoked closes a session whose user may no longer see its device
// (owner changed, membership removed): close code 4403 mirrors HTTP 403,
// and the page shows the device as forbidden instead of reconnecting.
var AccessRevoked = &wspeer.CloseError{Code: 4403, Text: "device not visible"}

// DefaultRecheckEvery is how often open sessions' access is asked again.
const DefaultRecheckEvery = 5 * time.Second

// recheckParallel is how many users a sweep asks about at once: half of
// the access cache's concurrent checks (access.CacheConfig.MaxConcurrent,
// 8), so new connections' checks always find the other half. A sweep then
// takes users × the backend's round trip / 4: 250 users 30 ms away took
// 8.3 s one at a time, and a revocation waited for that.
const recheckParallel = 4

// revokeGrace is how long the status entry saying why has to be written
// before the close frame: the peer writes queued frames in order, but a
// close is not queued behind them, so it waits this long (a client behind
// on its queue by more than that is cut by the close anyway).
const revokeGrace = 250 * time.Millisecond

// Refresher asks the access backend again about several devices of one
// user, bypassing and updating the answer cache (*access.Cached, one query
// per user). Without it, re-checks use Check, one device at a time.
type Refresher interface {
	RefreshMany(ctx context.Context, c *auth.Claims, token string, devices []string) (map[string]bool, error)
}

// session is one open, authorized browser connection.
type session struct {
	claims *auth.Claims
	token  string
	device string
	peer   *wspeer.Peer
	// revoked is set (under Handler.mu) once its end is under way, so a
	// sweep during the grace period neither counts nor closes it again.
	revoked bool
}

func pairKey(c *auth.Claims, device string) string {
	return c.Subject + "\x00" + c.Role + "\x00" + device
}

func (h *Handler) addSession(s *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := pairKey(s.claims, s.device)
	set := h.sessions[k]
	if set == nil {
		set = make(map[*session]struct{})
		h.sessions[k] = set
	}
	set[s] = struct{}{}
}

func (h *Handler) removeSession(s *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := pairKey(s.claims, s.device)
	delete(h.sessions[k], s)
	if len(h.sessions[k]) == 0 {
		delete(h.sessions, k)
	}
}

// RunRechecks asks, every RecheckEvery, whether each (user, device) pair
// with an open session is still allowed: once per pair however many tabs
// share it, batched per user (one query for all of a user's devices),
// recheckParallel users at a time (so the sweep holds at most half of the
// access cache's concurrent checks and everyone else's checks go on). A
// sweep that takes longer than RecheckEvery is followed by the next at
// once. A pair found
// denied has its sessions ended with a status entry and close code 4403;
// a backend error keeps them open (an outage must not cut everyone). It
// returns when ctx ends.
func (h *Handler) RunRechecks(ctx context.Context) {
	h.init()
	if h.AuthDisabled {
		return
	}
	t := time.NewTicker(h.RecheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.recheck(ctx)
		}
	}
}

// recheck is one sweep over the open pairs, recheckParallel users at a
// time.
func (h *Handler) recheck(ctx context.Context) {
	users := h.users()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(recheckParallel, len(users)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(users)) && ctx.Err() == nil; i = next.Add(1) - 1 {
				h.recheckUser(ctx, users[i])
			}
		})
	}
	wg.Wait()
}

func (h *Handler) recheckUser(ctx context.Context, u userSessions) {
	cctx, cancel := context.WithTimeout(ctx, h.CheckTimeout)
	vis, err := h.visible(cctx, u)
	cancel()
	for d, ok := range vis {
		if ok {
			h.Metrics.Rechecks.WithLabelValues("allowed").Inc()
			continue
		}
		h.Metrics.Rechecks.WithLabelValues("denied").Inc()
		h.revoke(u.claims, d)
	}
	if err != nil {
		h.Metrics.Rechecks.WithLabelValues("error").Inc()
		h.Logger.Debug("access re-check failed; sessions kept", "devices", len(u.devices), "err", err)
	}
}

func (h *Handler) visible(ctx context.Context, u userSessions) (map[string]bool, error) {
	if r, ok := h.Access.(Refresher); ok {
		return r.RefreshMany(ctx, u.claims, u.token, u.devices)
	}
	out := make(map[string]bool, len(u.devices))
	for _, d := range u.devices {
		switch err := h.Access.Check(ctx, u.claims, u.token, d); {
		case err == nil:
			out[d] = true
		case errors.Is(err, access.ErrDenied):
			out[d] = false
		default:
			return out, err
		}
	}
	return out, nil
}

// userSessions is what one user has open: its devices, and the claims
// and token of its session valid longest (a REST re-check presents it).
type userSessions struct {
	claims  *auth.Claims
	token   string
	devices []string
}

// users groups the open, unrevoked sessions by user (subject and role).
func (h *Handler) users() []userSessions {
	h.mu.Lock()
	defer h.mu.Unlock()
	by := make(map[string]*userSessions)
	var order []string
	for _, set := range h.sessions {
		var best *session
		for s := range set {
			if !s.revoked && (best == nil || s.claims.ValidUntil.After(best.claims.ValidUntil)) {
				best = s
			}
		}
		if best == nil {
			continue
		}
		k := best.claims.Subject + "\x00" + best.claims.Role
		u := by[k]
		if u == nil {
			u = &userSessions{claims: best.claims, token: best.token}
			by[k] = u
			order = append(order, k)
		}
		if best.claims.ValidUntil.After(u.claims.ValidUntil) {
			u.claims, u.token = best.claims, best.token
		}
		u.devices = append(u.devices, best.device)
	}
	out := make([]userSessions, len(order))
	for i, k := range order {
		out[i] = *by[k]
	}
	return out
}

// revoke ends every session of the pair: a status entry first, then 4403.
func (h *Handler) revoke(c *auth.Claims, device string) {
	h.mu.Lock()
	var peers []*wspeer.Peer
	for s := range h.sessions[pairKey(c, device)] {
		if !s.revoked {
			s.revoked = true
			peers = append(peers, s.peer)
		}
	}
	h.mu.Unlock()
	if len(peers) == 0 {
		return
	}
	h.Logger.Info("access revoked: closing sessions", "device", device, "sessions", len(peers))
	pm, cost := h.revokedEntry(device)
	for _, p := range peers {
		h.Metrics.Revoked.Inc()
		if pm != nil {
			p.Send(pm, cost)
		}
		time.AfterFunc(revokeGrace, func() { p.Close(AccessRevoked) })
	}
}

// revokedEntry is the status entry sent before 4403, and its cost
// (wspeer.FrameCost); nil when it cannot be encoded.
func (h *Handler) revokedEntry(device string) (*websocket.PreparedMessage, int) {
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	b, err := livelog.Status(device, now(), "Access revoked: this device is no longer visible to you", map[string]string{"access": "revoked"}).Marshal()
	if err != nil {
		return nil, 0
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
	if err != nil {
		return nil, 0
	}
	return pm, wspeer.FrameCost(len(b))
}
