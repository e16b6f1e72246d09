package downlink_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

// The schema bounds a queued configuration, so one owner cannot make every
// poll of pending rows slow or fail.
func TestQueuedConfigIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `insert into devices (devid) values ('BIG')`); err != nil {
		t.Fatal(err)
	}
	ok := `{"heartbeat_interval": 900, "fw_version": "` + strings.Repeat("v", 64) + `"}`
	if _, err := conn.Exec(ctx, `insert into device_downlinks (devid, config) values ('BIG', $1)`, ok); err != nil {
		t.Fatalf("normal config refused: %v", err)
	}
	big := `{"fw_version": "` + strings.Repeat("v", 1100) + `"}`
	_, err = conn.Exec(ctx, `insert into device_downlinks (devid, config) values ('BIG', $1)`, big)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" || pgErr.ConstraintName != "device_downlinks_config_size" {
		t.Fatalf("oversize config: %v, want check violation device_downlinks_config_size", err)
	}
}
