package stream

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/natstest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
)

// Moving to a cluster: uplinks the embedded store still held (the
// database was down) reach the cluster's UPLINKS, with their IDs, and the
// embedded UPLINKS is gone, so a second start moves nothing. Before
// MoveEmbedded nothing read them again once NATS_URL was set.
func TestMoveEmbeddedToTheCluster(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	want := fillEmbedded(t, dir, "MOVE", 120)

	cfg := Config{URL: natstest.Start(t).URL, DataDir: dir, Storage: true}
	cluster := openEmbedded(t, cfg)
	moved, err := MoveEmbedded(ctx, cfg, cluster)
	if err != nil || moved != len(want) {
		t.Fatalf("moved %d, %v; want %d", moved, err, len(want))
	}
	src, err := cluster.UplinkSource(ctx, prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}))
	if err != nil {
		t.Fatal(err)
	}
	got := map[uuid.UUID]bool{}
	testwait.ForState(t, "the moved uplinks in the cluster's UPLINKS", func() (bool, string) {
		ds, _ := src.Fetch(ctx, 500, 200*time.Millisecond)
		for _, d := range ds {
			if !want[d.Accepted.ID] {
				t.Fatalf("uplink %s was never published", d.Accepted.ID)
			}
			got[d.Accepted.ID] = true
			_ = d.Ack()
		}
		return len(got) == len(want), strconv.Itoa(len(got)) + " of " + strconv.Itoa(len(want))
	}, testwait.Within(10*time.Second))

	if embeddedHolds(dir, UplinksStream) {
		t.Error("the embedded UPLINKS is still there after the move")
	}
	if again, err := MoveEmbedded(ctx, cfg, cluster); err != nil || again != 0 {
		t.Errorf("second move: %d, %v; want 0", again, err)
	}
}

// A cluster that fails during the move: MoveEmbedded reports it, every
// uplink not acknowledged by the cluster stays in the embedded store, and
// the next move takes them all.
func TestMoveEmbeddedKeepsWhatTheClusterDidNotTake(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const n = 50
	fillEmbedded(t, dir, "KEEP", n)

	srv := natstest.Start(t)
	cfg := Config{URL: srv.URL, DataDir: dir, Storage: true, AckTimeout: 200 * time.Millisecond}
	cluster := openEmbedded(t, cfg)
	srv.Stop()
	if moved, err := MoveEmbedded(ctx, cfg, cluster); err == nil || moved != 0 {
		t.Fatalf("moved %d, %v, with the cluster down; want 0 and an error", moved, err)
	}
	if !embeddedHolds(dir, UplinksStream) {
		t.Fatal("the embedded UPLINKS was deleted although nothing was moved")
	}

	srv.Restart(t)
	testwait.ForState(t, "the engine back on the cluster", func() (bool, string) {
		return cluster.Ready(), "not ready"
	}, testwait.Within(15*time.Second))
	if moved, err := MoveEmbedded(ctx, cfg, cluster); err != nil || moved != n {
		t.Fatalf("second move: %d, %v; want %d", moved, err, n)
	}
}

// fillEmbedded leaves n accepted uplinks (of a few devices named after
// prefix) in the embedded store in dir, as a database outage does, and
// returns their IDs.
func fillEmbedded(t *testing.T, dir, prefix string, n int) map[uuid.UUID]bool {
	t.Helper()
	ctx := context.Background()
	embedded, err := Open(ctx, Config{DataDir: dir, Storage: true})
	if err != nil {
		t.Fatal(err)
	}
	defer embedded.Close()
	ids := map[uuid.UUID]bool{}
	for i := range n {
		a, payload := accepted(t, prefix+"-"+strconv.Itoa(i%7), uint32(i))
		if err := embedded.PublishUplink(ctx, a, payload); err != nil {
			t.Fatal(err)
		}
		ids[a.ID] = true
	}
	return ids
}
