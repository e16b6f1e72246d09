package supa

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// A DATABASE_URL the database refuses (a wrong user, password or database
// name: fix the URL) is told from a database that is away (wait), so that
// the binaries' start warnings say which. Before, both said "not
// reachable".
func TestRefusedLoginIsToldFromAnAbsentDatabase(t *testing.T) {
	u, err := url.Parse(pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	with := func(f func(*url.URL)) string { c := *u; f(&c); return c.String() }
	for name, tc := range map[string]struct {
		url     string
		refused bool
	}{
		"no such user":     {with(func(c *url.URL) { c.User = url.UserPassword("nobody", "x") }), true},
		"no such database": {with(func(c *url.URL) { c.Path = "/no_such_db" }), true},
		"nothing there":    {with(func(c *url.URL) { c.Host = "127.0.0.1:1" }), false},
	} {
		pool, err := NewPool(context.Background(), tc.url, PoolOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = pool.Ping(ctx)
		cancel()
		pool.Close()
		if err == nil {
			t.Fatalf("%s: ping succeeded", name)
		}
		if got := RefusedLogin(err); got != tc.refused {
			t.Errorf("%s: RefusedLogin(%v) = %v, want %v", name, err, got, tc.refused)
		}
	}
}
