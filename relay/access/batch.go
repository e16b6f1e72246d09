package access

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/nbiot-live/nbiot-live/internal/supa"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// MaxBatch bounds the devices of one Visible call: callers split longer
// lists (a REST query string stays short).
const MaxBatch = 100

// BatchChecker answers for several devices of one user in one query: the
// relay re-checks a user's open sessions this way.
type BatchChecker interface {
	// Visible returns which of devices (at most MaxBatch) the user may
	// read; an error wraps ErrUnavailable or ErrTokenRefused.
	Visible(ctx context.Context, c *auth.Claims, token string, devices []string) (map[string]bool, error)
}

// Visible implements BatchChecker: one read-only transaction as the user.
func (p *Postgres) Visible(ctx context.Context, c *auth.Claims, _ string, devices []string) (map[string]bool, error) {
	claims, err := json.Marshal(c.Raw)
	if err != nil {
		return nil, fmt.Errorf("%w: encode claims: %v", ErrUnavailable, err)
	}
	tx, err := p.Pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("%w: begin: %v", ErrUnavailable, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "set local role authenticated"); err != nil {
		return nil, fmt.Errorf("%w: set role: %v", ErrUnavailable, err)
	}
	if _, err := tx.Exec(ctx, "select set_config('request.jwt.claims', $1, true)", string(claims)); err != nil {
		return nil, fmt.Errorf("%w: set claims: %v", ErrUnavailable, err)
	}
	rows, err := tx.Query(ctx, "select devid from public.devices where devid = any($1)", devices)
	if err != nil {
		return nil, fmt.Errorf("%w: query: %v", ErrUnavailable, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("%w: query: %v", ErrUnavailable, err)
	}
	return visibleSet(devices, ids), nil
}

// Visible implements BatchChecker: GET devices?devid=in.(a,b,…) with the
// user's token (device IDs are [A-Za-z0-9_-], nothing to quote).
func (r *REST) Visible(ctx context.Context, _ *auth.Claims, token string, devices []string) (map[string]bool, error) {
	u := r.BaseURL + "/rest/v1/devices?select=devid&devid=in.(" + strings.Join(devices, ",") + ")"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: request: %v", ErrUnavailable, err)
	}
	supa.SetUserToken(req.Header, r.APIKey, token)
	resp, err := r.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxRESTBody)
	if resp.StatusCode != http.StatusOK {
		// Never a revocation: a 401 is the token (expired at exp, where the
		// relay's own 4401, at exp plus leeway, ends the sessions anyway),
		// a 403 a grant missing (restError).
		b, _ := io.ReadAll(body)
		return nil, restError(resp.StatusCode, b)
	}
	var rows []struct {
		DevID string `json:"devid"`
	}
	if err := json.NewDecoder(body).Decode(&rows); err != nil {
		return nil, fmt.Errorf("%w: rest body: %v", ErrUnavailable, err)
	}
	ids := make([]string, len(rows))
	for i, row := range rows {
		ids[i] = row.DevID
	}
	return visibleSet(devices, ids), nil
}

func visibleSet(asked, found []string) map[string]bool {
	m := make(map[string]bool, len(asked))
	for _, d := range asked {
		m[d] = false
	}
	for _, d := range found {
		if _, ok := m[d]; ok {
			m[d] = true
		}
	}
	return m
}

// RefreshMany is Refresh for several devices of one user: one backend
// query per MaxBatch devices when the backend is a BatchChecker, one per
// device otherwise. Every answer is cached; on an error the answers
// gathered so far are returned with it.
func (c *Cached) RefreshMany(ctx context.Context, cl *auth.Claims, token string, devices []string) (map[string]bool, error) {
	out := make(map[string]bool, len(devices))
	b, batch := c.inner.(BatchChecker)
	if !batch {
		for _, d := range devices {
			err := c.Refresh(ctx, cl, token, d)
			switch {
			case err == nil:
				out[d] = true
			case errors.Is(err, ErrDenied):
				out[d] = false
			default:
				return out, err
			}
		}
		return out, nil
	}
	for len(devices) > 0 {
		n := min(len(devices), MaxBatch)
		chunk := devices[:n]
		devices = devices[n:]
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return out, fmt.Errorf("%w: too many checks in flight: %v", ErrUnavailable, ctx.Err())
		}
		vis, err := b.Visible(ctx, cl, token, chunk)
		<-c.sem
		if err != nil {
			c.metrics.Checks.WithLabelValues("error").Inc()
			return out, err
		}
		for d, ok := range vis {
			out[d] = ok
			c.store(cacheKey(cl, d), ok)
			if ok {
				c.metrics.Checks.WithLabelValues("allowed").Inc()
			} else {
				c.metrics.Checks.WithLabelValues("denied").Inc()
			}
		}
	}
	return out, nil
}
