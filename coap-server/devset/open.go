package devset

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// Tables whose devid column a Set may list. The name goes into SQL and a
// REST path, so only these are accepted.
const (
	Credentialed = "device_credentials"
	Registered   = "devices"
)

// Open starts the set of table's device IDs over src (Postgres when
// DatabaseURL is set, else Supabase REST), saved in dir, and returns it
// with a function that stops it and releases its pool.
func Open(ctx context.Context, src supa.Source, table, dir string, logger *slog.Logger) (*Set, func(), error) {
	if table != Credentialed && table != Registered {
		return nil, nil, fmt.Errorf("devset: no such table %q", table)
	}
	var (
		list    Lister
		release = func() {}
	)
	switch {
	case src.DatabaseURL != "":
		pool, err := supa.NewPool(ctx, src.DatabaseURL, supa.PoolOptions{MaxConns: 1})
		if err != nil {
			return nil, nil, err
		}
		list, release = PG(pool, table), pool.Close
	case src.SupabaseURL != "":
		list = REST(src.SupabaseURL, src.ServiceKey, supa.RESTClient(), table)
	default:
		return nil, nil, fmt.Errorf("%s: needs DATABASE_URL or SUPABASE_URL", table)
	}
	s := New(table, list, 0, dir, logger)
	s.Start(ctx)
	return s, func() { s.Close(); release() }, nil
}

// PG lists table's devids over Postgres.
func PG(pool *pgxpool.Pool, table string) Lister {
	query := `select devid from public.` + table + ` order by devid limit $1`
	return func(ctx context.Context) ([]string, error) {
		rows, err := pool.Query(ctx, query, MaxIDs+1) // one more: refresh refuses a longer list
		if err != nil {
			return nil, fmt.Errorf("%s: %w", table, err)
		}
		defer rows.Close()
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return nil, fmt.Errorf("%s: %w", table, err)
			}
			ids = append(ids, id)
		}
		return ids, rows.Err()
	}
}

// REST lists table's devids over Supabase REST, paging by devid (Supabase
// caps each response at its max rows without an error).
func REST(baseURL, serviceKey string, client *http.Client, table string) Lister {
	page := func(ctx context.Context, after string) ([]string, error) {
		q := url.Values{"select": {"devid"}, "order": {"devid.asc"}, "limit": {"1000"}}
		if after != "" {
			q.Set("devid", "gt."+after)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/rest/v1/"+table+"?"+q.Encode(), nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", table, err)
		}
		supa.SetKey(req.Header, serviceKey)
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", table, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return nil, fmt.Errorf("%s: read: %w", table, err)
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: HTTP %d", table, resp.StatusCode)
		}
		var rows []struct {
			DevID string `json:"devid"`
		}
		if err := json.Unmarshal(body, &rows); err != nil {
			return nil, fmt.Errorf("%s: decode: %w", table, err)
		}
		if rows == nil { // null ([] makes an empty slice): not an empty table
			return nil, fmt.Errorf("%s: decode: null, want a list", table)
		}
		ids := make([]string, len(rows))
		for i, r := range rows {
			ids[i] = r.DevID
		}
		return ids, nil
	}
	return func(ctx context.Context) ([]string, error) {
		var ids []string
		for len(ids) <= MaxIDs { // past it refresh refuses the list
			p, err := page(ctx, lastOf(ids))
			if err != nil {
				return nil, err
			}
			if len(p) == 0 {
				return ids, nil
			}
			ids = append(ids, p...)
		}
		return ids, nil
	}
}

func lastOf(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	return ids[len(ids)-1]
}
