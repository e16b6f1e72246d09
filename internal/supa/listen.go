package supa

import (
	"context"
	"fmt"
	"time"
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
}

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
	if err := l.Connected(ctx); err != nil {
		return err
	}
	connected()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait: %w", err)
		}
		l.Notify(ctx, n.Payload)
	}
}
