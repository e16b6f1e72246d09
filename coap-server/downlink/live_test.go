package downlink_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// entryJSON is an entry as a client receives it.
func entryJSON(t *testing.T, e *livelog.Entry) map[string]any {
	t.Helper()
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// checkLifecycleEntry wants a downlink entry of row id in state with the
// config under data.config.
func checkLifecycleEntry(t *testing.T, e *livelog.Entry, device string, id int64, state, message string) {
	t.Helper()
	m := entryJSON(t, e)
	d, _ := m["data"].(map[string]any)
	cfg, _ := d["config"].(map[string]any)
	if m["type"] != "downlink" || m["deviceId"] != device || m["message"] != message ||
		d["downlink_id"] != float64(id) || d["state"] != state || d["config_version"] != float64(id) ||
		cfg["heartbeat_interval"] != 600.0 || cfg["config_version"] != float64(id) {
		t.Errorf("%s entry = %v, want downlink %d %s %q with its config", state, m, id, state, message)
	}
}

// Postgres mode: a queued row is announced when its NOTIFY arrives, the
// send keeps its entry (now with downlink_id/state/config_version), and the
// echo of the version produces "applied" right after the uplink's entry.
func TestDownlinkLifecycleEntries(t *testing.T) {
	e := start(t)
	e.device(t, "dev-life")
	id := e.queue(t, "dev-life", `{"heartbeat_interval": 600}`)
	testwait.For(t, "the queued entry", func() bool { return len(e.queued.all()) == 1 })
	checkLifecycleEntry(t, e.queued.all()[0], "dev-life", id, "queued", fmt.Sprintf("Configuration v%d queued", id))

	postLibcoap(t, e.addr, &nbiotv1.Uplink{DeviceId: "dev-life", UplinkCount: 1})
	live := e.live.All()
	if len(live) != 2 {
		t.Fatalf("live log after the first uplink: %d entries, want the uplink and the sent entry", len(live))
	}
	checkLifecycleEntry(t, live[1], "dev-life", id, "sent", fmt.Sprintf("Sent configuration v%d", id))

	v := uint32(id)
	postLibcoap(t, e.addr, &nbiotv1.Uplink{DeviceId: "dev-life", UplinkCount: 2, Config: &nbiotv1.DeviceConfig{ConfigVersion: &v}})
	live = e.live.All()
	if len(live) != 4 || live[2].Type != livelog.TypeUplink {
		t.Fatalf("live log after the echo: %d entries (%+v), want uplink, sent, uplink, applied", len(live), live)
	}
	checkLifecycleEntry(t, live[3], "dev-life", id, "applied", fmt.Sprintf("Configuration v%d applied", id))

	// Later uplinks: nothing more about this downlink, and no second
	// "queued" (the service did not learn of a new row).
	postLibcoap(t, e.addr, &nbiotv1.Uplink{DeviceId: "dev-life", UplinkCount: 3, Config: &nbiotv1.DeviceConfig{ConfigVersion: &v}})
	if live = e.live.All(); len(live) != 5 || live[4].Type != livelog.TypeUplink {
		t.Errorf("after applied: %d entries, want only the new uplink's", len(live))
	}
	if n := len(e.queued.all()); n != 1 {
		t.Errorf("%d queued entries, want 1", n)
	}
}

// REST mode: the poll that finds a new row announces it, once; a reload
// that finds it again does not.
func TestRESTDownlinkQueuedEntry(t *testing.T) {
	rec := &liveRecorder{}
	e := startREST(t, restOpts{key: restSecretKey, reloadEvery: 1, live: rec.Broadcast})
	e.device(t, "rest-life")
	id := e.queue(t, "rest-life", `{"heartbeat_interval": 600}`)
	e.poll(t)
	if got := rec.all(); len(got) != 1 {
		t.Fatalf("%d entries after the poll, want 1 queued", len(got))
	}
	checkLifecycleEntry(t, rec.all()[0], "rest-life", id, "queued", fmt.Sprintf("Configuration v%d queued", id))
	e.poll(t) // reloadEvery 1: a full reload, which finds the same row
	if n := len(rec.all()); n != 1 {
		t.Errorf("%d entries after a reload, want still 1", n)
	}
}

// A row that was sent before a restart is loaded as sent: no "queued".
func TestDownlinkSentBeforeRestartIsNotQueuedAgain(t *testing.T) {
	rec := &liveRecorder{}
	var id int64
	e := startREST(t, restOpts{key: restSecretKey, reloadEvery: 1000, live: rec.Broadcast,
		setup: func(pool *pgxpool.Pool, owner string) {
			ctx := context.Background()
			if _, err := pool.Exec(ctx, `insert into public.devices (devid, owner_id) values ('rest-sent', $1)`, owner); err != nil {
				t.Fatal(err)
			}
			if err := pool.QueryRow(ctx, `insert into public.device_downlinks (devid, config, sent_at)
				values ('rest-sent', '{"heartbeat_interval": 600}', now()) returning id`).Scan(&id); err != nil {
				t.Fatal(err)
			}
		}})
	if !e.svc.Holds("rest-sent", id) {
		t.Fatalf("the first load did not put row %d", id)
	}
	if n := len(rec.all()); n != 0 {
		t.Errorf("%d entries for a row sent before the restart, want none", n)
	}
}
