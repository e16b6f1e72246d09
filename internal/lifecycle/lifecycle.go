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

// Run starts p, waits for ctx to end and shuts p down within drain.
func Run(ctx context.Context, p Program, logger *slog.Logger, drain time.Duration) error {
	if err := p.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	logger.Info("shutting down", "drain", drain.String())
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	return p.Shutdown(sctx)
}
