package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
)

// storedCounter counts what coap-server+db has stored, so that its CPU per
// request covers storing every uplink it answered 2.04, not only those the
// database took while the load ran: settle waits until the activity rows
// catch up with the answers.
type storedCounter struct {
	conn     *pgx.Conn
	base     int64 // rows before the server started
	accepted int64 // 2.04 answers so far
}

func newStoredCounter() (*storedCounter, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, os.Getenv("COAPBENCH_DATABASE_URL"))
	if err != nil {
		return nil, fmt.Errorf("COAPBENCH_DATABASE_URL: %w", err)
	}
	s := &storedCounter{conn: conn}
	if s.base, err = s.rows(); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return s, nil
}

func (s *storedCounter) rows() (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int64
	err := s.conn.QueryRow(ctx, `select count(*) from public.activity`).Scan(&n)
	return n, err
}

// settle returns once every answered uplink has its row, and how long
// that took.
func (s *storedCounter) settle(answered int) (time.Duration, error) {
	s.accepted += int64(answered)
	start := time.Now()
	for {
		n, err := s.rows()
		if err != nil {
			return 0, err
		}
		if n-s.base >= s.accepted {
			return time.Since(start), nil
		}
		if time.Since(start) > 10*time.Minute {
			return 0, fmt.Errorf("%d of %d answered uplinks stored after 10 minutes", n-s.base, s.accepted)
		}
		time.Sleep(100 * time.Millisecond) // polling the database: nothing to wait on
	}
}

func (s *storedCounter) close() { s.conn.Close(context.Background()) }
