package supa

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A database on another machine is reached over TLS unless the URL says
// otherwise: pgx's default (sslmode=prefer) falls back to plaintext, which
// anyone in the path can force, and the password and every row crossed in
// clear. A local one, or an explicit sslmode, is left as pgx reads it.
func TestRemoteDatabaseRequiresTLS(t *testing.T) {
	t.Setenv("PGSSLMODE", "")
	for _, tc := range []struct {
		dsn           string
		plainFallback bool // a connection without TLS may be tried
		tls           bool // the first attempt is TLS
	}{
		{"postgresql://u:p@db.example.com:5432/x", false, true},
		{"host=db.example.com user=u dbname=x", false, true},
		{"postgresql://u:p@db.example.com:5432/x?sslmode=disable", false, false},
		{"postgresql://u:p@db.example.com:5432/x?sslmode=prefer", true, true},
		{"postgresql://u:p@127.0.0.1:5432/x", true, true},
		{"postgresql://u:p@nbiot-db.internal:5432/x", false, true},
		{"host=/var/run/postgresql dbname=x", false, false},
	} {
		pool, err := NewPool(context.Background(), tc.dsn, PoolOptions{})
		if err != nil {
			t.Fatalf("%s: %v", tc.dsn, err)
		}
		// The pools, and the single connections of LISTEN and the
		// provisioning tool (Connect; found in a review: they kept pgx's
		// default).
		one, err := connConfig(tc.dsn)
		if err != nil {
			t.Fatalf("%s: %v", tc.dsn, err)
		}
		for name, c := range map[string]*pgx.ConnConfig{"pool": pool.Config().ConnConfig, "Connect": one} {
			plain := false
			for _, f := range c.Fallbacks {
				plain = plain || f.TLSConfig == nil
			}
			if plain != tc.plainFallback || (c.TLSConfig != nil) != tc.tls {
				t.Errorf("%s, %s: TLS first %v, plaintext fallback %v; want %v, %v", name, tc.dsn, c.TLSConfig != nil, plain, tc.tls, tc.plainFallback)
			}
		}
		pool.Close()
	}
}
