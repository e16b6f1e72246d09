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
// older unapplied row behind a newer applied one is not pending), handed
// to each as it is read.
func (p PG) Pending(ctx context.Context, each func(Row)) error {
	rows, err := p.Pool.Query(ctx, `
		select id, devid, config::text, sent_at is not null, false
		from public.device_downlinks_pending
		limit $1`, MaxPending)
	if err != nil {
		return fmt.Errorf("device_downlinks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return fmt.Errorf("device_downlinks: %w", err)
		}
		each(r)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("device_downlinks: %w", err)
	}
	return nil
}

// Row reads row id after its notification, if it is still the newest row
// of its device (the rule of device_downlinks_pending), with Done set when
// it was applied or superseded meanwhile: the cache then stops sending the
// device's older row. pgx.ErrNoRows: a newer row of the device exists
// (its own notification puts it), or the row was deleted.
//
// The pkey finds the row; the newer-row check walks the pkey above it
// (id > $1, filtered by devid, stopping at the first match), so it costs
// the rows inserted since, which for a notification just received is a
// handful: no index on (devid, id) is needed.
func (p PG) Row(ctx context.Context, id int64) (Row, error) {
	rows, err := p.Pool.Query(ctx, `
		select r.id, r.devid, r.config::text, r.sent_at is not null,
		       r.applied_at is not null or r.superseded_at is not null
		from public.device_downlinks r
		where r.id = $1
		  and not exists (select 1 from public.device_downlinks n where n.devid = r.devid and n.id > r.id)`, id)
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
	err := row.Scan(&r.ID, &r.DeviceID, &cfg, &r.Sent, &r.Done)
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
				// A newer row of the device exists, or it was deleted.
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
		Undelivered: func() {
			s.log.Warn("downlinks: DATABASE_URL does not deliver notifications (a transaction pooler, such as Supabase's on port 6543, drops them): " +
				"a new downlink is handed out after the next periodic re-read (" + s.reload.String() + "), not at the device's next uplink. " +
				"Use the direct connection or the session pooler (port 5432)")
		},
	})
}
