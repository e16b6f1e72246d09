package supa

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// Through a transaction pooler (PgBouncer in transaction mode, as
// Supabase's on port 6543): queries from several connections of a pool,
// then from the pool of a restarted process, all succeed. With pgx's
// named prepared statements, an eighth failed ("prepared statement …
// already exists"), and after the restart every one of them.
func TestPoolThroughATransactionPooler(t *testing.T) {
	url := pgtest.Bouncer(t, pgtest.NewDB(t))
	for run := range 2 { // the second is a restarted process: new connections, old server ones
		pool, err := NewPool(context.Background(), url, PoolOptions{MaxConns: 8})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Go(func() {
				for i := range 100 {
					var n int
					q := fmt.Sprintf("select count(*) from devices where devid = $1 and %d = %d", i%4, i%4)
					if err := pool.QueryRow(context.Background(), q, fmt.Sprint("D", w)).Scan(&n); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		pool.Close()
		close(errs)
		for err := range errs {
			t.Errorf("run %d: %v", run, err)
		}
	}
}

// A LISTEN through a transaction pooler never hears its notifications:
// Listen says so (Undelivered) and keeps listening. On a direct
// connection it hears them and says nothing.
func TestListenTellsWhenNotificationsDoNotArrive(t *testing.T) {
	db := pgtest.NewDB(t)
	for _, tc := range []struct {
		name, url   string
		undelivered bool
	}{
		{"direct", db, false},
		{"transaction pooler", pgtest.Bouncer(t, db), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			connected, said, heard := make(chan struct{}, 1), make(chan struct{}, 1), make(chan string, 1)
			done := make(chan struct{})
			go func() {
				defer close(done)
				Listen(ctx, tc.url, "nbiot_test", Listener{
					Connected:   func(context.Context) error { connected <- struct{}{}; return nil },
					Notify:      func(_ context.Context, p string) { heard <- p },
					Lost:        func(err error, _ time.Duration) { t.Errorf("lost: %v", err) },
					Undelivered: func() { said <- struct{}{} },
				})
			}()
			defer func() { cancel(); <-done }()
			select {
			case <-connected:
			case <-time.After(30 * time.Second):
				t.Fatal("not connected")
			}
			if got := len(said) == 1; got != tc.undelivered {
				t.Fatalf("Undelivered told: %v, want %v", got, tc.undelivered)
			}
			if tc.undelivered {
				return
			}
			c, err := Connect(ctx, tc.url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			if _, err := c.Exec(ctx, "select pg_notify('nbiot_test', 'p1')"); err != nil {
				t.Fatal(err)
			}
			select {
			case p := <-heard:
				if p != "p1" {
					t.Errorf("heard %q", p)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the notification did not arrive")
			}
		})
	}
}
