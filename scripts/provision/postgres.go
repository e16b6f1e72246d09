package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// pgStore provisions in one transaction over a direct connection.
type pgStore struct{ conn *pgx.Conn }

func openPostgres(ctx context.Context, dsn string) (*pgStore, error) {
	// The PSKs cross this connection: TLS to another machine (supa.Connect).
	conn, err := supa.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return &pgStore{conn: conn}, nil
}

func (s *pgStore) close() { s.conn.Close(context.Background()) }

func (s *pgStore) provision(ctx context.Context, r request) error {
	return pgx.BeginFunc(ctx, s.conn, func(tx pgx.Tx) error {
		var ownerID *uuid.UUID
		if r.owner != "" {
			id, err := findOwner(ctx, tx, r.owner)
			if err != nil {
				return err
			}
			ownerID = &id
		}
		if _, err := tx.Exec(ctx, `insert into public.devices (devid, owner_id) values ($1, $2)
			on conflict (devid) do update set owner_id = coalesce(excluded.owner_id, devices.owner_id)`, r.device, ownerID); err != nil {
			return fmt.Errorf("devices: %w", err)
		}
		if r.psk == nil {
			return nil
		}
		q := `insert into public.device_credentials (devid, psk) values ($1, $2)`
		if r.rotate {
			q += ` on conflict (devid) do update set psk = excluded.psk, created_at = now()`
		}
		if _, err := tx.Exec(ctx, q, r.device, r.psk); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" {
				return errKeyExists
			}
			return fmt.Errorf("device_credentials: %w", err)
		}
		return nil
	})
}

func findOwner(ctx context.Context, tx pgx.Tx, owner string) (uuid.UUID, error) {
	var id uuid.UUID
	if u, err := uuid.Parse(owner); err == nil {
		err := tx.QueryRow(ctx, `select id from auth.users where id = $1`, u).Scan(&id)
		if err != nil {
			return id, fmt.Errorf("-owner: no auth.users row with that id: %w", err)
		}
		return id, nil
	}
	err := tx.QueryRow(ctx, `select id from auth.users where lower(email) = lower($1)`, owner).Scan(&id)
	if err != nil {
		return id, fmt.Errorf("-owner: no auth.users row with that email: %w", err)
	}
	return id, nil
}
