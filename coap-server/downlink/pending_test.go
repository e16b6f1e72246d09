package downlink_test

import (
	"context"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/coap-server/downlink"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
)

// Both storage modes read "pending" by one rule (the view
// device_downlinks_pending): per device the newest row, unless applied or
// superseded. An older row that committed late, behind a newer one the
// device already applied, must never be sent: it would roll the device's
// configuration back.
func TestPendingIsTheNewestRowInBothModes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, pool := newDB(t)
	// Explicit ids stand for the commit order: on LATE, row 2 was sent and
	// applied before row 1 (taken earlier, committed later) became visible.
	for _, q := range []string{
		`insert into devices (devid) values ('LATE'), ('PLAIN'), ('NEWER'), ('DONE')`,
		`insert into device_downlinks (id, devid, config, sent_at, applied_at) overriding system value values
		   (2, 'LATE', '{"heartbeat_interval": 600}', now(), now()),
		   (1, 'LATE', '{"heartbeat_interval": 60}', null, null),
		   (3, 'PLAIN', '{"gnss_interval": 0}', null, null),
		   (4, 'NEWER', '{"heartbeat_interval": 1}', now(), null),
		   (5, 'NEWER', '{"heartbeat_interval": 2}', null, null),
		   (6, 'DONE', '{"heartbeat_interval": 3}', now(), now())`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	const key = "sb_secret_pendingviewtest0123"
	srv := fakepostgrest.Start(t, db, fakepostgrest.Options{SecretKey: key})
	stores := map[string]downlink.Store{
		"postgres": downlink.PG{Pool: pool},
		"rest":     &downlink.REST{BaseURL: srv.URL, ServiceKey: key, Client: &http.Client{Timeout: 10 * time.Second}},
	}
	for name, store := range stores {
		t.Run(name, func(t *testing.T) {
			var rows []downlink.Row
			if err := store.Pending(ctx, func(r downlink.Row) { rows = append(rows, r) }); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rows {
				got = append(got, r.DeviceID)
				if r.DeviceID == "NEWER" && r.ID != 5 {
					t.Errorf("NEWER: pending id %d, want 5", r.ID)
				}
			}
			sort.Strings(got)
			if len(got) != 2 || got[0] != "NEWER" || got[1] != "PLAIN" {
				t.Errorf("pending devices %v, want [NEWER PLAIN] (never LATE's older row, never DONE)", got)
			}
		})
	}
}
