package storage_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
)

// erringSource hands out its deliveries once, together with an error (a
// fetch that failed after taking messages), then nothing.
type erringSource struct {
	mu  sync.Mutex
	ds  []storage.Delivery
	err error
}

func (s *erringSource) Fetch(ctx context.Context, limit int, wait time.Duration) ([]storage.Delivery, error) {
	s.mu.Lock()
	ds, err := s.ds, s.err
	s.ds, s.err = nil, nil
	s.mu.Unlock()
	if ds == nil {
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return ds, err
}

type recordingWriter struct{ rows chan int }

func (w recordingWriter) Write(ctx context.Context, rows *storage.Rows) error {
	w.rows <- len(rows.Devices)
	return nil
}

// Deliveries a fetch took before it failed are written and acknowledged,
// not left to the stream's redelivery a minute later.
func TestDeliveriesOfAFailedFetchAreStored(t *testing.T) {
	acked := make(chan struct{}, 2)
	var ds []storage.Delivery
	for _, dev := range []string{"A", "B"} {
		ds = append(ds, storage.Delivery{
			Accepted:   storagetest.Rec(dev, time.Now(), storagetest.FullUplink(dev, 1)),
			Ack:        func() error { acked <- struct{}{}; return nil },
			InProgress: func() error { return nil },
			Nak:        func() error { return nil },
		})
	}
	src := &erringSource{ds: ds, err: errors.New("nats: connection closed mid-fetch")}
	w := recordingWriter{rows: make(chan int, 4)}
	c := storage.NewConsumer(src, w, storage.Options{Workers: 1, BatchAge: 10 * time.Millisecond})
	defer c.Close(context.Background())
	timeout := time.After(30 * time.Second)
	for range 2 {
		select {
		case <-acked:
		case <-timeout:
			t.Fatal("the deliveries of the failed fetch were never acknowledged")
		}
	}
	if got := <-w.rows; got != 2 {
		t.Fatalf("wrote %d devices, want 2", got)
	}
	if n := testutil.ToFloat64(c.Metrics().FetchErrors); n != 1 {
		t.Fatalf("fetch errors counted %v, want 1", n)
	}
}

// failingWriter refuses every write, as a database that is down.
type failingWriter struct{ attempts chan struct{} }

func (w failingWriter) Write(ctx context.Context, rows *storage.Rows) error {
	select {
	case w.attempts <- struct{}{}:
	default:
	}
	return errors.New("connect: connection refused")
}

// A stop while the database is down: the batch being retried is handed
// back to the stream (Nak) at once, and Close returns without waiting out
// its drain time. Before, it retried until the deadline (25 s of every
// stop during an outage) and the process then exited 1.
func TestCloseDuringAnOutageHandsTheBatchBack(t *testing.T) {
	naked := make(chan struct{}, 2)
	var ds []storage.Delivery
	for _, dev := range []string{"A", "B"} {
		ds = append(ds, storage.Delivery{
			Accepted:   storagetest.Rec(dev, time.Now(), storagetest.FullUplink(dev, 1)),
			Ack:        func() error { t.Error("acknowledged a batch the database never took"); return nil },
			InProgress: func() error { return nil },
			Nak:        func() error { naked <- struct{}{}; return nil },
		})
	}
	w := failingWriter{attempts: make(chan struct{}, 1)}
	c := storage.NewConsumer(&erringSource{ds: ds}, w, storage.Options{Workers: 1, BatchAge: 10 * time.Millisecond})
	<-w.attempts // the batch is being retried
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("Close waited for its deadline")
	}
	if len(naked) != 2 {
		t.Fatalf("%d of 2 deliveries handed back", len(naked))
	}
	if n := testutil.ToFloat64(c.Metrics().Abandoned); n != 2 {
		t.Errorf("abandoned counted %v, want 2", n)
	}
}
