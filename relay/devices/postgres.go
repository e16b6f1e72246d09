package devices

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// Postgres lists devices in the database, in a read-only transaction as
// role authenticated with request.jwt.claims = the user's claims (as
// relay/access checks a device, and as PostgREST serves a request), so the
// policy "owners read their devices" decides which rows exist.
type Postgres struct {
	Pool *pgxpool.Pool
}

// List implements Lister.
func (p Postgres) List(ctx context.Context, c *auth.Claims, _ string, limit int) ([]Device, error) {
	claims, err := json.Marshal(c.Raw)
	if err != nil {
		return nil, fmt.Errorf("devices: encode claims: %w", err)
	}
	var out []Device
	err = pgx.BeginTxFunc(ctx, p.Pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue("set local role authenticated")
		b.Queue("select set_config('request.jwt.claims', $1, true)", string(claims))
		b.Queue(`select devid, name, last_seen_at from public.devices
			order by last_seen_at desc nulls last, devid limit $1`, limit+1)
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("set role: %w", err)
		}
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("set claims: %w", err)
		}
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("query: %w", err)
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Device, error) {
			var d Device
			err := row.Scan(&d.DevID, &d.Name, &d.LastSeenAt)
			return d, err
		})
		if err != nil {
			return fmt.Errorf("rows: %w", err)
		}
		return br.Close()
	})
	if err != nil {
		return nil, fmt.Errorf("devices: %w", err)
	}
	return out, nil
}
