package storage_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// gate is a Writer for the queue's own logic (bounds, shutdown), not a
// database stand-in: it blocks every write until released, or fails while
// down, and counts what it was given. Database behaviour is tested with the
// real Postgres in storagetest.
type gate struct {
	release chan struct{}
	mu      sync.Mutex
	stored  int
	started chan struct{} // receives once per write attempt
}

func newGate() *gate { return &gate{release: make(chan struct{}), started: make(chan struct{}, 1000)} }

func (g *gate) Write(ctx context.Context, rows *storage.Rows) error {
	select {
	case g.started <- struct{}{}:
	default:
	}
	select {
	case <-g.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	g.mu.Lock()
	g.stored += len(rows.Activity)
	g.mu.Unlock()
	return nil
}

func rec(i int) storage.Record {
	return storage.Record{ID: uuid.New(), DeviceID: "Q1", ReceivedAt: time.Now(), Uplink: &nbiotv1.Uplink{UplinkCount: uint32(i)}}
}

func TestQueueFull(t *testing.T) {
	g := newGate()
	reg := prometheus.NewRegistry()
	q := storage.NewQueue(g, storage.Options{Size: 10, BatchSize: 1, Workers: 1, Registerer: reg})
	// The worker takes one record and blocks in Write; then 10 fit.
	if err := q.Enqueue(rec(0)); err != nil {
		t.Fatal(err)
	}
	<-g.started
	for i := 1; i <= 10; i++ {
		if err := q.Enqueue(rec(i)); err != nil {
			t.Fatalf("enqueue %d: %v", i, err)
		}
	}
	start := time.Now()
	for i := range 5 {
		if err := q.Enqueue(rec(100 + i)); !errors.Is(err, storage.ErrQueueFull) {
			t.Fatalf("enqueue into a full queue: %v, want ErrQueueFull", err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Enqueue blocked for %v on a full queue", d)
	}
	if got := testutil.ToFloat64(q.Metrics().QueueFull); got != 5 {
		t.Errorf("queue_full metric %v, want 5", got)
	}
	if got, err := testutil.GatherAndCount(reg, "nbiot_storage_queue_length", "nbiot_storage_queue_full_total"); err != nil || got != 2 {
		t.Errorf("metrics registered: %d %v", got, err)
	}
	close(g.release)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if g.stored != 11 {
		t.Errorf("stored %d, want 11", g.stored)
	}
}

// TestCloseDeadline: a database that never answers cannot hold shutdown
// past its deadline; what is left is counted and reported.
func TestCloseDeadline(t *testing.T) {
	g := newGate() // never released
	q := storage.NewQueue(g, storage.Options{Size: 100, BatchSize: 10, Workers: 1})
	for i := range 25 {
		if err := q.Enqueue(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	<-g.started
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- q.Close(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("close: %v, want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after its deadline")
	}
	if got := testutil.ToFloat64(q.Metrics().Unstored); got != 25 {
		t.Errorf("unstored %v, want 25", got)
	}
	// Idempotent: a second Close reports the same outcome at once.
	if err := q.Close(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second close: %v", err)
	}
	if err := q.Enqueue(rec(0)); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("enqueue after close: %v", err)
	}
}

// TestEnqueueCloseRace: Enqueue racing Close never panics (send on a
// closed channel) and every accepted record is written.
func TestEnqueueCloseRace(t *testing.T) {
	g := newGate()
	close(g.release)
	q := storage.NewQueue(g, storage.Options{Size: 1000, BatchSize: 50, Workers: 2})
	var accepted sync.WaitGroup
	var mu sync.Mutex
	n := 0
	for w := range 4 {
		accepted.Add(1)
		go func() {
			defer accepted.Done()
			for i := range 200 {
				if q.Enqueue(rec(w*1000+i)) == nil {
					mu.Lock()
					n++
					mu.Unlock()
				}
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.Close(ctx); err != nil {
		t.Fatal(err)
	}
	accepted.Wait()
	if g.stored != n {
		t.Errorf("stored %d, accepted %d", g.stored, n)
	}
}
