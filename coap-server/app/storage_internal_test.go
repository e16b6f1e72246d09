package app

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/coap-server/storage/postgres"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// The start's warning tells a DATABASE_URL the database refuses (a wrong
// user, password or database name: fix the URL) from a database that is
// away (wait). Before, both said "not reachable".
func TestStartTellsARefusedLoginFromAnAbsentDatabase(t *testing.T) {
	db := pgtest.NewDB(t)
	u, err := url.Parse(db)
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
		pw, err := postgres.New(context.Background(), tc.url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = pw.Ping(ctx)
		cancel()
		pw.Close()
		if err == nil {
			t.Fatalf("%s: ping succeeded", name)
		}
		if got := refusedLogin(err); got != tc.refused {
			t.Errorf("%s: refusedLogin(%v) = %v, want %v", name, err, got, tc.refused)
		}
	}
}
