package downlink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// Channel is the LISTEN channel the migration's trigger notifies, with the
// new row's id as payload.
const Channel = "nbiot_downlink"

// MaxPending bounds the rows one load reads.
const MaxPending = 100000

// PG is the Store for DATABASE_URL mode.
type PG struct {
	Pool *pgxpool.Pool
}

// Pending implements Store: the view device_downlinks_pending, per device
// the newest row, kept only when it is neither applied nor superseded (an
// older unapplied row behind a newer applied one is not pending).
func (p PG) Pending(ctx context.Context) ([]Row, error) {
	rows, err := p.Pool.Query(ctx, `
		select id, devid, config::text, sent_at is not null
		from public.device_downlinks_pending
		limit $1`, MaxPending)
	if err != nil {
		return nil, fmt.Errorf("device_downlinks: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanRow)
	if err != nil {
		return nil, fmt.Errorf("device_downlinks: %w", err)
	}
	return out, nil
}

// Row reads one row by id (after a notification).
func (p PG) Row(ctx context.Context, id int64) (Row, error) {
	rows, err := p.Pool.Query(ctx, `
		select id, devid, config::text, sent_at is not null from public.device_downlinks
		where id = $1 and applied_at is null and superseded_at is null`, id)
	if err != nil {
		return Row{}, fmt.Errorf("device_downlinks: %w", err)
	}
	r, err := pgx.CollectExactlyOneRow(rows, scanRow)
	if err != nil {
		return Row{}, fmt.Errorf("device_downlinks %d: %w", id, err)
	}
	return r, nil
}

func scanRow(row pgx.CollectableRow) (Row, error) {
	var r Row
	var cfg string
	err := row.Scan(&r.ID, &r.DeviceID, &cfg, &r.Sent)
	r.Config = []byte(cfg)
	return r, err
}

// MarkSent implements Store in one statement.
func (p PG) MarkSent(ctx context.Context, id int64, deviceID string, at time.Time) error {
	_, err := p.Pool.Exec(ctx, `
		with sent as (
		  update public.device_downlinks set sent_at = $3 where id = $1 and sent_at is null)
		update public.device_downlinks set superseded_at = $3
		where devid = $2 and id < $1 and applied_at is null and superseded_at is null`, id, deviceID, at)
	if err != nil {
		return fmt.Errorf("device_downlinks sent: %w", err)
	}
	return nil
}

// MarkApplied implements Store.
func (p PG) MarkApplied(ctx context.Context, id int64, at time.Time) error {
	_, err := p.Pool.Exec(ctx, `
		update public.device_downlinks set applied_at = $2, sent_at = coalesce(sent_at, $2)
		where id = $1 and applied_at is null`, id, at)
	if err != nil {
		return fmt.Errorf("device_downlinks applied: %w", err)
	}
	return nil
}

// listenPG keeps a dedicated connection on LISTEN nbiot_downlink until
// ctx ends (supa.Listen: reconnects with backoff, never gives up): on
// every (re)connection it reloads all pending rows (notifications sent
// while disconnected are lost), then puts each notified row. connected,
// when not nil, is called after each successful reload.
func (s *Service) listenPG(ctx context.Context, dsn string, pg PG, connected func()) {
	supa.Listen(ctx, dsn, Channel, supa.Listener{
		Connected: func(ctx context.Context) error {
			if err := s.Reload(ctx); err != nil {
				return err
			}
			if connected != nil {
				connected()
			}
			return nil
		},
		Notify: func(ctx context.Context, payload string) {
			id, err := strconv.ParseInt(payload, 10, 64)
			if err != nil {
				s.log.Warn("downlink notification ignored: payload is not an id")
				return
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			r, err := pg.Row(rctx, id)
			cancel()
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				// Applied or superseded meanwhile, or deleted.
			case err != nil:
				s.metrics.RefreshErrors.Inc()
				s.log.Warn("downlink row not read", "downlink_id", id, "err", err)
			default:
				s.Put(r)
			}
		},
		Lost: func(err error, backoff time.Duration) {
			s.metrics.RefreshErrors.Inc()
			s.log.Warn("downlink LISTEN lost, reconnecting", "err", err, "backoff", backoff.String())
		},
	})
}
