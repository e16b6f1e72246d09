// Package lifecycle runs a program the way both binaries do: start, serve
// until the context ends (SIGINT/SIGTERM in main), then shut down within a
// drain deadline (the platform's kill timeout less a margin).
package lifecycle

import (
	"context"
	"log/slog"
	"time"
)

// Program is what Run drives: coap-server's and the relay's app.App.
type Program interface {
	Start(ctx context.Context) error
	Shutdown(ctx context.Context) error
}

// Failing is a Program that can fail for good while it serves: Failed
// delivers why (coap-server's embedded store no longer takes writes).
type Failing interface {
	Failed() <-chan error
}

// Run starts p, waits for ctx to end and shuts p down within drain. A
// Program that fails (Failing) is shut down the same way, and Run returns
// its failure, so that the process exits with an error and the platform
// starts it again.
func Run(ctx context.Context, p Program, logger *slog.Logger, drain time.Duration) error {
	if err := p.Start(ctx); err != nil {
		return err
	}
	var failed <-chan error
	if f, ok := p.(Failing); ok {
		failed = f.Failed()
	}
	var cause error
	select {
	case <-ctx.Done():
		logger.Info("shutting down", "drain", drain.String())
	case cause = <-failed:
		logger.Error("failed; shutting down to be started again", "err", cause, "drain", drain.String())
	}
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := p.Shutdown(sctx); err != nil && cause == nil {
		return err
	}
	return cause
}
