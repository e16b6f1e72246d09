package supa

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listener is what Listen does around one LISTEN channel.
type Listener struct {
	// Connected runs after every (re)connection, before notifications are
	// read: what was notified while disconnected is lost, so it reloads.
	// An error drops the connection and retries.
	Connected func(ctx context.Context) error
	// Notify runs for each notification, with its payload.
	Notify func(ctx context.Context, payload string)
	// Lost is told of each lost connection and the wait before the next.
	Lost func(err error, backoff time.Duration)
	// Undelivered, if set, is told when a notification sent to the
	// connection after its LISTEN did not arrive within ProbeWait: a
	// transaction pooler (Supabase's on port 6543, PgBouncer in
	// transaction mode) does not keep a LISTEN with its client, and drops
	// what is notified to it. Listen goes on listening: whatever re-reads
	// the caller does periodically is then what picks changes up.
	Undelivered func()
}

// ProbeWait is how long a connection's first notification, its own, may
// take to arrive before Listener.Undelivered is told.
const ProbeWait = 2 * time.Second

// Listen keeps a dedicated connection to dsn on LISTEN channel until ctx
// ends (a pool's connections cannot wait for notifications). It reconnects
// with backoff, 1 s doubling to 30 s and back to 1 s once connected, and
// never gives up. channel must be a fixed identifier, not outside input.
func Listen(ctx context.Context, dsn, channel string, l Listener) {
	backoff := time.Second
	for ctx.Err() == nil {
		err := listenOnce(ctx, dsn, channel, l, func() { backoff = time.Second })
		if ctx.Err() != nil {
			return
		}
		l.Lost(err, backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func listenOnce(ctx context.Context, dsn, channel string, l Listener, connected func()) error {
	conn, err := Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "listen "+channel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := probe(ctx, conn, dsn, l.Undelivered); err != nil {
		return err
	}
	if err := l.Connected(ctx); err != nil {
		return err
	}
	connected()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait: %w", err)
		}
		if n.Channel == channel {
			l.Notify(ctx, n.Payload)
		}
	}
}

// probe checks that conn receives what is notified to it: it listens on a
// channel of its own, has another connection notify it, and waits up to
// ProbeWait, telling undelivered when nothing came. What conn's other
// channel was notified meanwhile is dropped: Connected reloads after it.
func probe(ctx context.Context, conn *pgx.Conn, dsn string, undelivered func()) error {
	if undelivered == nil {
		return nil
	}
	// Lower case: LISTEN folds an unquoted name, pg_notify does not.
	channel := "nbiot_probe_" + strings.ToLower(rand.Text()[:16])
	if _, err := conn.Exec(ctx, "listen "+channel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	other, err := Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	_, err = other.Exec(ctx, "select pg_notify($1, '')", channel)
	_ = other.Close(context.Background())
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, ProbeWait)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(wctx)
		switch {
		case err == nil && n.Channel != channel:
			continue
		case err == nil:
		case ctx.Err() == nil && wctx.Err() != nil:
			undelivered()
		default:
			return fmt.Errorf("wait: %w", err)
		}
		break
	}
	if _, err := conn.Exec(ctx, "unlisten "+channel); err != nil {
		return fmt.Errorf("unlisten: %w", err)
	}
	return nil
}
