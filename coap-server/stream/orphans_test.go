package stream

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/google/uuid"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// A process that fetched uplinks for the database and ended before storing
// them (kill -9 leaves its deliveries unacknowledged, as Close without
// acks does here): the next one on the DATA_DIR gets them at once, not
// after RedeliverAfter (an hour here; 1 min by default, and before, the
// uplinks waited that long after a crash).
func TestDeliveriesOfAnEndedProcessComeAtOnce(t *testing.T) {
	ctx := context.Background()
	cfg := Config{DataDir: t.TempDir(), Storage: true, RedeliverAfter: time.Hour}
	first, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for i := range 3 {
		a, payload := accepted(t, "ORPHAN-"+strconv.Itoa(i), 1)
		if err := first.PublishUplink(ctx, a, payload); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, a.ID)
	}
	fetched := func(e *Engine, what string) {
		t.Helper()
		src, err := e.UplinkSource(ctx, prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
		if err != nil {
			t.Fatal(err)
		}
		var got []uuid.UUID
		testwait.ForState(t, what, func() (bool, string) {
			ds, _ := src.Fetch(ctx, 10, 200*time.Millisecond)
			for _, d := range ds {
				got = append(got, d.Accepted.ID)
				if what == "the second process's fetch" {
					_ = d.Ack()
				}
			}
			return len(got) >= len(ids), strconv.Itoa(len(got)) + " of " + strconv.Itoa(len(ids)) + " fetched"
		}, testwait.Within(10*time.Second))
		for _, id := range ids {
			if !slices.Contains(got, id) {
				t.Fatalf("%s: uplink %s not among %v", what, id, got)
			}
		}
	}
	fetched(first, "the first process's fetch") // and never acknowledged
	first.Close()

	second := openEmbedded(t, cfg)
	fetched(second, "the second process's fetch")
}
