package dtls

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PGKeys reads PSKs from device_credentials over a pgx pool (DATABASE_URL
// mode). The pool should connect as a role that may read the table
// (service_role or the owner: RLS has no user policy on it).
type PGKeys struct {
	Pool *pgxpool.Pool
}

// RefreshParallel is 1: Refresh's queries share the key pool with the
// handshakes' lookups (OpenKeys gives it one connection of its own), and
// Postgres answers 100 keys in about a millisecond, so a pass over 10,000
// keys takes some 100 ms one query at a time.
func (PGKeys) RefreshParallel() int { return 1 }

// LoadPSK implements KeyLoader.
func (p PGKeys) LoadPSK(ctx context.Context, deviceID string) ([]byte, error) {
	var psk []byte
	err := p.Pool.QueryRow(ctx, `select psk from public.device_credentials where devid = $1`, deviceID).Scan(&psk)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrUnknownDevice
	}
	if err != nil {
		return nil, fmt.Errorf("device_credentials: %w", err)
	}
	return psk, nil
}

// LoadPSKs implements BatchLoader.
func (p PGKeys) LoadPSKs(ctx context.Context, ids []string) (map[string][]byte, error) {
	rows, err := p.Pool.Query(ctx, `select devid, psk from public.device_credentials where devid = any($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("device_credentials: %w", err)
	}
	defer rows.Close()
	out := make(map[string][]byte, len(ids))
	for rows.Next() {
		var (
			id  string
			psk []byte
		)
		if err := rows.Scan(&id, &psk); err != nil {
			return nil, fmt.Errorf("device_credentials: %w", err)
		}
		out[id] = psk
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("device_credentials: %w", err)
	}
	return out, nil
}
