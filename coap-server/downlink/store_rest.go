package downlink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// REST is the Store for SUPABASE_URL mode, over PostgREST with the service
// key (which bypasses RLS). Client must have a timeout.
type REST struct {
	BaseURL    string // SUPABASE_URL, no trailing slash
	ServiceKey string // never logged
	Client     *http.Client
}

type restRow struct {
	ID     int64           `json:"id"`
	DevID  string          `json:"devid"`
	Config json.RawMessage `json:"config"`
	SentAt *string         `json:"sent_at"`
}

// restPage is the rows asked for per request. Supabase caps every response
// at its "Max rows" setting (PostgREST's db-max-rows, 1000 by default)
// without an error, so reads page by id until a page comes back empty
// rather than trust that one request returned everything.
const restPage = 1000

// Pending implements Store: the view device_downlinks_pending (newest row
// per device, unless applied or superseded: the same rule as the Postgres
// mode), in pages.
func (r *REST) Pending(ctx context.Context) ([]Row, error) {
	var out []Row
	err := r.pages(ctx, pendingView, "id.desc", "", func(x restRow) { out = append(out, x.row()) })
	return out, err
}

// Since reads the unapplied, unsuperseded rows with an id above after, oldest
// first (at most MaxPending, in pages), so a poll can remember the largest
// id it saw.
func (r *REST) Since(ctx context.Context, after int64) ([]Row, error) {
	var out []Row
	err := r.pages(ctx, table, "id.asc", "gt."+strconv.FormatInt(after, 10), func(x restRow) { out = append(out, x.row()) })
	return out, err
}

// Relations read and written.
const (
	table       = "device_downlinks"
	pendingView = "device_downlinks_pending"
)

// pages reads pending rows of relation in order (id.asc or id.desc),
// starting from the id filter idFrom ("" = all), restPage rows at a time,
// each page starting after the last id of the one before, until a page is
// empty or MaxPending rows were read.
func (r *REST) pages(ctx context.Context, relation, order, idFrom string, each func(restRow)) error {
	next := "gt."
	if order == "id.desc" {
		next = "lt."
	}
	for total := 0; total < MaxPending; {
		q := url.Values{
			"select": {"id,devid,config,sent_at"},
			"order":  {order},
			"limit":  {strconv.Itoa(min(restPage, MaxPending-total))},
		}
		if relation == table {
			q.Set("applied_at", "is.null")
			q.Set("superseded_at", "is.null")
		}
		if idFrom != "" {
			q.Set("id", idFrom)
		}
		var rows []restRow
		if err := r.do(ctx, http.MethodGet, relation, q, nil, &rows); err != nil {
			return err
		}
		if len(rows) == 0 {
			return nil
		}
		for _, x := range rows {
			each(x)
		}
		total += len(rows)
		idFrom = next + strconv.FormatInt(rows[len(rows)-1].ID, 10)
	}
	return nil
}

func (x restRow) row() Row {
	return Row{ID: x.ID, DeviceID: x.DevID, Config: x.Config, Sent: x.SentAt != nil}
}

// MarkSent implements Store with two PATCHes (PostgREST has no multi-row
// statement); the second is idempotent, so a retry after a partial failure
// is harmless.
func (r *REST) MarkSent(ctx context.Context, id int64, deviceID string, at time.Time) error {
	ts := at.UTC().Format(time.RFC3339Nano)
	sid := strconv.FormatInt(id, 10)
	if err := r.do(ctx, http.MethodPatch, table, url.Values{"id": {"eq." + sid}, "sent_at": {"is.null"}},
		map[string]string{"sent_at": ts}, nil); err != nil {
		return err
	}
	return r.do(ctx, http.MethodPatch, table, url.Values{
		"devid": {"eq." + deviceID}, "id": {"lt." + sid}, "applied_at": {"is.null"}, "superseded_at": {"is.null"},
	}, map[string]string{"superseded_at": ts}, nil)
}

// MarkApplied implements Store.
func (r *REST) MarkApplied(ctx context.Context, id int64, at time.Time) error {
	return r.do(ctx, http.MethodPatch, table, url.Values{"id": {"eq." + strconv.FormatInt(id, 10)}, "applied_at": {"is.null"}},
		map[string]string{"applied_at": at.UTC().Format(time.RFC3339Nano)}, nil)
}

func (r *REST) do(ctx context.Context, method, relation string, q url.Values, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("device_downlinks: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.BaseURL+"/rest/v1/"+relation+"?"+q.Encode(), rd)
	if err != nil {
		return fmt.Errorf("device_downlinks: %w", err)
	}
	supa.SetKey(req.Header, r.ServiceKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Prefer", "return=minimal")
	}
	resp, err := r.Client.Do(req)
	if err != nil {
		return fmt.Errorf("device_downlinks %s: %w", method, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("device_downlinks %s: read: %w", method, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("device_downlinks %s: HTTP %d", method, resp.StatusCode)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("device_downlinks: decode: %w", err)
		}
	}
	return nil
}

// pollREST loads everything once (retrying), then polls for newer rows,
// with a full reload every ReloadInterval (see Config.ReloadInterval): ids
// are not visible in commit order, so "id > last" alone can skip a row for
// good.
func (s *Service) pollREST(ctx context.Context, r *REST, ready func()) {
	var last int64
	backoff := time.Second
	for ctx.Err() == nil {
		rows, err := r.Pending(ctx)
		if err == nil {
			for _, x := range rows {
				s.Put(x)
				last = max(last, x.ID)
			}
			break
		}
		s.metrics.RefreshErrors.Inc()
		s.log.Warn("downlink load failed, retrying", "err", err)
		s.sleep(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
	if ready != nil && ctx.Err() == nil {
		ready()
	}
	reloadEvery := max(1, int(s.reload/s.poll))
	full := false // a reload is due (kept until one succeeds)
	for n := 1; ctx.Err() == nil; n++ {
		s.sleep(ctx, s.poll)
		if ctx.Err() != nil {
			return
		}
		full = full || n%reloadEvery == 0
		var (
			rows []Row
			err  error
		)
		if full {
			rows, err = r.Pending(ctx)
		} else {
			rows, err = r.Since(ctx, last)
		}
		if err != nil {
			if ctx.Err() == nil {
				s.metrics.RefreshErrors.Inc()
				s.log.Warn("downlink poll failed", "err", err)
			}
			continue
		}
		full = false
		for _, x := range rows {
			s.Put(x)
			last = max(last, x.ID)
		}
		if ready != nil {
			ready()
		}
	}
}
