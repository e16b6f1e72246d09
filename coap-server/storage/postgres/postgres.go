// Package postgres is the storage writer for DATABASE_URL: each batch is
// one pipelined round trip of bulk statements (unnest of column arrays)
// in one implicit transaction, every statement idempotent on uplink_id or
// device ID so that a retried batch never adds a row.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// Options configures the writer's pool; zero fields take the defaults.
type Options struct {
	// MaxConns bounds the pool (default 4: the queue's workers plus room
	// for a health check).
	MaxConns int32
	// ConnectTimeout bounds one connection attempt (default 5 s), so an
	// unreachable database fails an attempt fast and the queue retries.
	ConnectTimeout time.Duration
}

// Writer writes batches through a pgx pool. It connects lazily: a database
// that is down at start only delays the first write.
type Writer struct {
	pool *pgxpool.Pool
}

// New parses databaseURL and makes the pool without connecting. Errors
// never contain the URL (it may hold a password).
func New(ctx context.Context, databaseURL string, o Options) (*Writer, error) {
	pool, err := supa.NewPool(ctx, databaseURL, supa.PoolOptions{
		MaxConns: o.MaxConns, ConnectTimeout: o.ConnectTimeout, AppName: "nbiot-coap-server",
	})
	if err != nil {
		return nil, err
	}
	return &Writer{pool: pool}, nil
}

// Close closes the pool.
func (w *Writer) Close() { w.pool.Close() }

// Ping checks the database is reachable, for the start-up log.
func (w *Writer) Ping(ctx context.Context) error { return w.pool.Ping(ctx) }

// The statements. devices keeps the latest last_seen_at; device_config is
// replaced only by a report at least as new; activity and sensor_data skip
// rows whose uplink_id is already stored.
const (
	sqlDevices = `insert into public.devices (devid, last_seen_at)
select * from unnest($1::text[], $2::timestamptz[])
on conflict (devid) do update set last_seen_at = excluded.last_seen_at
where devices.last_seen_at is null or devices.last_seen_at < excluded.last_seen_at`

	sqlConfigs = `insert into public.device_config (devid, heartbeat_interval, hw_version, fw_version,
  gnss_interval, wifi_scan_interval, config_version, updated_at)
select * from unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::timestamptz[])
on conflict (devid) do update set heartbeat_interval = excluded.heartbeat_interval, hw_version = excluded.hw_version,
  fw_version = excluded.fw_version, gnss_interval = excluded.gnss_interval, wifi_scan_interval = excluded.wifi_scan_interval,
  config_version = excluded.config_version, updated_at = excluded.updated_at
where device_config.updated_at <= excluded.updated_at`

	sqlActivity = `insert into public.activity (uplink_id, devid, uplink_count, sleep, modem, gnss, wifi, other, received_at, msg_key)
select * from unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::timestamptz[], $10::text[])
on conflict (uplink_id) do nothing`

	sqlSensors = `insert into public.sensor_data (uplink_id, devid, data_type, data, received_at)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::timestamptz[])
on conflict (uplink_id, data_type) do nothing`
)

// Write sends the batch's statements in one pipeline. Without explicit
// transaction statements Postgres runs a pipeline up to its Sync as one
// implicit transaction: all rows or none.
func (w *Writer) Write(ctx context.Context, rows *storage.Rows) error {
	b := &pgx.Batch{}
	if n := len(rows.Devices); n > 0 {
		ids, seen := make([]string, n), make([]time.Time, n)
		for i, d := range rows.Devices {
			ids[i], seen[i] = d.DevID, d.LastSeenAt
		}
		b.Queue(sqlDevices, ids, seen)
	}
	if n := len(rows.Configs); n > 0 {
		ids, hb, hw, fw, gi, wi, cv, at := make([]string, n), make([]*int64, n), make([]*string, n), make([]*string, n),
			make([]*int64, n), make([]*int64, n), make([]*int64, n), make([]time.Time, n)
		for i, c := range rows.Configs {
			ids[i], hb[i], hw[i], fw[i], gi[i], wi[i], cv[i], at[i] = c.DevID, c.HeartbeatInterval, c.HwVersion, c.FwVersion,
				c.GnssInterval, c.WifiScanInterval, c.ConfigVersion, c.UpdatedAt
		}
		b.Queue(sqlConfigs, ids, hb, hw, fw, gi, wi, cv, at)
	}
	// uplink_ids go as [16]byte: pgx encodes those natively, where a
	// uuid.UUID (a driver.Valuer) took a reflective path that built an
	// error per element before falling back to its text (21% of
	// coap-server's CPU while storing).
	if n := len(rows.Activity); n > 0 {
		uid, ids, cnt, at, key := make([][16]byte, n), make([]string, n), make([]int64, n), make([]time.Time, n), make([]*string, n)
		sl, mo, gn, wf, ot := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		for i, a := range rows.Activity {
			uid[i], ids[i], cnt[i], at[i], key[i] = a.UplinkID, a.DevID, a.UplinkCount, a.ReceivedAt, a.MsgKey
			sl[i], mo[i], gn[i], wf[i], ot[i] = a.Sleep, a.Modem, a.Gnss, a.Wifi, a.Other
		}
		b.Queue(sqlActivity, uid, ids, cnt, sl, mo, gn, wf, ot, at, key)
	}
	if n := len(rows.Sensors); n > 0 {
		uid, ids, typ, data, at := make([][16]byte, n), make([]string, n), make([]string, n), make([]string, n), make([]time.Time, n)
		for i, s := range rows.Sensors {
			uid[i], ids[i], typ[i], data[i], at[i] = s.UplinkID, s.DevID, s.DataType, string(s.Data), s.ReceivedAt
		}
		b.Queue(sqlSensors, uid, ids, typ, data, at)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := w.pool.SendBatch(ctx, b).Close(); err != nil {
		return classify(err)
	}
	return nil
}

// classify marks the errors that retrying cannot fix: SQLSTATE class 22
// (data exception) and 23 (integrity constraint violation). Everything else
// (connection refused, admin shutdown, serialization failure, a missing
// table or privilege during a deployment) is retried.
func classify(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && len(pe.Code) == 5 && (pe.Code[:2] == "22" || pe.Code[:2] == "23") {
		return fmt.Errorf("%w: %w", storage.ErrRejected, err)
	}
	return fmt.Errorf("postgres: %w", err)
}
