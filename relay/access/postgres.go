package access

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nbiot-live/nbiot-live/internal/supa"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// Postgres checks access in the database itself: in a read-only
// transaction it switches to role authenticated and sets
// request.jwt.claims to the user's claims, exactly as PostgREST does for a
// request, so auth.uid() and the same RLS policies decide.
type Postgres struct {
	Pool *pgxpool.Pool
}

// NewPostgres opens a small pool on databaseURL. maxConns bounds the
// connections the relay holds (checks are short and cached).
func NewPostgres(ctx context.Context, databaseURL string, maxConns int32) (*Postgres, error) {
	// supa never quotes the URL (it may hold a password) in its errors.
	pool, err := supa.NewPool(ctx, databaseURL, supa.PoolOptions{MaxConns: maxConns, AppName: "nbiot-relay"})
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	return &Postgres{Pool: pool}, nil
}

// Close closes the pool.
func (p *Postgres) Close() { p.Pool.Close() }

// Check implements Checker.
func (p *Postgres) Check(ctx context.Context, c *auth.Claims, _ string, deviceID string) error {
	claims, err := json.Marshal(c.Raw)
	if err != nil {
		return fmt.Errorf("%w: encode claims: %v", ErrUnavailable, err)
	}
	tx, err := p.Pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("%w: begin: %v", ErrUnavailable, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// One round trip for the three statements. set local keeps the role
	// and the claims inside this transaction.
	b := &pgx.Batch{}
	b.Queue("set local role authenticated")
	b.Queue("select set_config('request.jwt.claims', $1, true)", string(claims))
	b.Queue("select 1 from public.devices where devid = $1", deviceID)
	br := tx.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return fmt.Errorf("%w: set role: %v", ErrUnavailable, err)
	}
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return fmt.Errorf("%w: set claims: %v", ErrUnavailable, err)
	}
	var one int
	err = br.QueryRow().Scan(&one)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return ErrDenied
	case err != nil:
		return fmt.Errorf("%w: query: %v", ErrUnavailable, err)
	}
	return nil
}
