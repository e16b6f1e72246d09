// Package streamtest gives tests a real embedded stream engine (NATS
// JetStream in a temporary DATA_DIR) that also records, typed, every
// entry logged through it, so a test can inspect what the datagram path
// and the downlink service put on the live log.
package streamtest

import (
	"context"
	"sync"
	"testing"

	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Recorder is a real *stream.Engine whose Log, LogAsync, LogBehind and Notify also
// keep the entry. It implements ingest.Stream.
type Recorder struct {
	*stream.Engine
	mu      sync.Mutex
	entries []*livelog.Entry
	notices []*livelog.Entry
}

// New opens an embedded engine on a fresh directory, closed at cleanup.
func New(t testing.TB, cfg stream.Config) *Recorder {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	e, err := stream.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return &Recorder{Engine: e}
}

// Log logs e and records it when the stream took it as new.
func (r *Recorder) Log(ctx context.Context, e *livelog.Entry, id string) (uint64, bool, error) {
	seq, dup, err := r.Engine.Log(ctx, e, id)
	if err == nil && !dup {
		r.record(&r.entries, e)
	}
	return seq, dup, err
}

// LogAsync records e and logs it.
func (r *Recorder) LogAsync(e *livelog.Entry) {
	r.record(&r.entries, e)
	r.Engine.LogAsync(e)
}

// LogAsyncID records e and logs it.
func (r *Recorder) LogAsyncID(e *livelog.Entry, id string) {
	r.record(&r.entries, e)
	r.Engine.LogAsyncID(e, id)
}

// LogBehind records e when the engine took it and logs it.
func (r *Recorder) LogBehind(e *livelog.Entry, id string, done func(uint64)) error {
	err := r.Engine.LogBehind(e, id, done)
	if err == nil {
		r.record(&r.entries, e)
	}
	return err
}

// Broadcast is LogAsync, for code that takes a func(*livelog.Entry).
func (r *Recorder) Broadcast(e *livelog.Entry) { r.LogAsync(e) }

// Notify records the report e and sends it.
func (r *Recorder) Notify(e *livelog.Entry) {
	r.record(&r.notices, e)
	r.Engine.Notify(e)
}

func (r *Recorder) record(into *[]*livelog.Entry, e *livelog.Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*into = append(*into, e)
}

// All returns the entries logged so far, in order.
func (r *Recorder) All() []*livelog.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*livelog.Entry(nil), r.entries...)
}

// Notices returns the reports sent so far.
func (r *Recorder) Notices() []*livelog.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*livelog.Entry(nil), r.notices...)
}
