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
	ID           int64           `json:"id"`
	DevID        string          `json:"devid"`
	Config       json.RawMessage `json:"config"`
	SentAt       *string         `json:"sent_at"`
	AppliedAt    *string         `json:"applied_at"`    // table only
	SupersededAt *string         `json:"superseded_at"` // table only
}

// restPage is the rows asked for per request. Supabase caps every response
// at its "Max rows" setting (PostgREST's db-max-rows, 1000 by default)
// without an error, so reads page by id until a page comes back empty
// rather than trust that one request returned everything.
const restPage = 1000

// Relations read and written, and the columns read from each.
const (
	table        = "device_downlinks"
	pendingView  = "device_downlinks_pending"
	tableColumns = "id,devid,config,sent_at,applied_at,superseded_at"
	viewColumns  = "id,devid,config,sent_at"
)

// Pending implements Store: the view device_downlinks_pending (newest row
// per device, unless applied or superseded: the same rule as the Postgres
// mode), in pages, each row handed to each as its page arrives.
func (r *REST) Pending(ctx context.Context, each func(Row)) error {
	return r.pages(ctx, pendingView, viewColumns, 0, MaxPending, each)
}

// Since hands each every row with an id above after, applied and
// superseded ones included (Done), newest first, in pages. A row newer
// than every row the cache knows of is in this window with the device's
// older rows above after, and comes before them: the cache, which ignores
// rows older than the one it holds, then applies the newest-row rule of
// device_downlinks_pending without ever holding the older row meanwhile
// (unless a full cache evicts the newer row's tombstone before the older
// row arrives). It reads the whole window (what was inserted since the last poll):
// stopping early would leave rows below the next poll's mark.
func (r *REST) Since(ctx context.Context, after int64, each func(Row)) error {
	return r.pages(ctx, table, tableColumns, after, 0, each)
}

// Newest is the largest id in device_downlinks (0 when empty): the first
// load's poll mark, so that the first poll reads what was inserted since
// the load, not every applied row of the table's history.
func (r *REST) Newest(ctx context.Context) (int64, error) {
	var rows []restRow
	q := url.Values{"select": {"id"}, "order": {"id.desc"}, "limit": {"1"}}
	if err := r.do(ctx, http.MethodGet, table, q, nil, &rows); err != nil {
		return 0, err
	}
	if len(rows) == 0 {
		return 0, nil
	}
	return rows[0].ID, nil
}

// pages reads the columns of relation with an id above after (0: all)
// newest first, restPage rows at a time, each page below the last id of
// the one before, until a page is empty or limit rows were read (0: no
// limit). Only one page is held at a time. A page whose ids do not go on
// down is an error, with none of its rows handed on.
func (r *REST) pages(ctx context.Context, relation, columns string, after int64, limit int, each func(Row)) error {
	var below int64 // 0: the first page
	for total := 0; limit == 0 || total < limit; {
		n := restPage
		if limit > 0 {
			n = min(n, limit-total)
		}
		q := url.Values{"select": {columns}, "order": {"id.desc"}, "limit": {strconv.Itoa(n)}}
		if after > 0 {
			q.Add("id", "gt."+strconv.FormatInt(after, 10))
		}
		if below > 0 {
			q.Add("id", "lt."+strconv.FormatInt(below, 10))
		}
		var rows []restRow
		if err := r.do(ctx, http.MethodGet, relation, q, nil, &rows); err != nil {
			return err
		}
		if len(rows) == 0 {
			return nil
		}
		// Each page must go on below the last: an answer that ignores the
		// filters (not PostgREST's) would make this read its first page forever.
		last := below
		for _, x := range rows {
			if x.ID <= after || (last > 0 && x.ID >= last) {
				return fmt.Errorf("%s: id %d out of order (want descending ids above %d, below %d): not a PostgREST answer", relation, x.ID, after, last)
			}
			last = x.ID
		}
		for _, x := range rows {
			each(x.row())
		}
		total += len(rows)
		below = last
	}
	return nil
}

func (x restRow) row() Row {
	return Row{ID: x.ID, DeviceID: x.DevID, Config: x.Config, Sent: x.SentAt != nil,
		Done: x.AppliedAt != nil || x.SupersededAt != nil}
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
		if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
			// null decodes as no rows: taken as an answer, Newest would
			// be 0 and the first poll read the table's whole history.
			return fmt.Errorf("device_downlinks: decode: null, want a list")
		}
	}
	return nil
}

// pollREST loads everything once (retrying), then polls for newer rows,
// with a full reload every ReloadInterval (see Config.ReloadInterval): ids
// are not visible in commit order, so "id > last" alone can skip a row for
// good. Only a poll moves the mark, and only when it read its whole
// window: a reload's rows say nothing of the done rows between them, which
// the next poll must still see.
func (s *Service) pollREST(ctx context.Context, r *REST, ready func()) {
	last := s.loadREST(ctx, r)
	if ctx.Err() != nil {
		return
	}
	if ready != nil {
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
		var err error
		if full {
			err = s.Reload(ctx)
		} else {
			seen := last
			err = r.Since(ctx, last, func(x Row) {
				s.Put(x)
				seen = max(seen, x.ID)
			})
			if err == nil {
				last = seen
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				s.metrics.RefreshErrors.Inc()
				s.log.Warn("downlink poll failed", "err", err)
			}
			continue
		}
		full = false
		if ready != nil {
			ready()
		}
	}
}

// loadREST reads the poll's first mark (Newest), then every pending row,
// retrying both until they work or ctx ends, and returns the mark. A row
// at or below it was in the view's answer when pending, or commits late
// and waits for a reload like any row behind the mark.
func (s *Service) loadREST(ctx context.Context, r *REST) int64 {
	backoff := time.Second
	for ctx.Err() == nil {
		last, err := r.Newest(ctx)
		if err == nil {
			err = s.Reload(ctx)
		}
		if err == nil {
			return last
		}
		s.metrics.RefreshErrors.Inc()
		s.log.Warn("downlink load failed, retrying", "err", err)
		s.sleep(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
	return 0
}
