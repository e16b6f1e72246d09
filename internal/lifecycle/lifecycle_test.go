package lifecycle

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"
)

type prog struct {
	startErr error
	deadline time.Time
	shut     int
}

func (p *prog) Start(context.Context) error { return p.startErr }
func (p *prog) Shutdown(ctx context.Context) error {
	p.shut++
	p.deadline, _ = ctx.Deadline()
	return nil
}

func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := &prog{}
	before := time.Now()
	if err := Run(ctx, p, slog.New(slog.DiscardHandler), time.Minute); err != nil {
		t.Fatal(err)
	}
	if p.shut != 1 || p.deadline.Before(before.Add(time.Minute)) {
		t.Errorf("shutdown %d times, deadline %v: want once, a minute after the signal", p.shut, p.deadline)
	}
	failing := &prog{startErr: errors.New("COAP_ADDR: listen: in use")}
	if err := Run(context.Background(), failing, slog.New(slog.DiscardHandler), time.Minute); err == nil || failing.shut != 0 {
		t.Errorf("start failure: err %v, shutdowns %d", err, failing.shut)
	}
}

type failingProg struct {
	prog
	failed chan error
}

func (p *failingProg) Failed() <-chan error { return p.failed }

// A program that fails while it serves is shut down, and Run returns the
// failure (the process exits with it, and the platform starts it again).
func TestRunEndsOnFailure(t *testing.T) {
	p := &failingProg{failed: make(chan error, 1)}
	cause := errors.New("DATA_DIR /data: the store takes no writes")
	p.failed <- cause
	if err := Run(context.Background(), p, slog.New(slog.DiscardHandler), time.Minute); !errors.Is(err, cause) {
		t.Fatalf("Run = %v, want the failure", err)
	}
	if p.shut != 1 {
		t.Fatalf("shut down %d times, want once", p.shut)
	}
}
