// Command coap-server receives device uplinks over CoAP, answers at once,
// stores them in Supabase and streams them as live-log entries on /ws.
// Configuration is read from the environment (see the README).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/memlimit"
)

// drainTimeout is how long shutdown may take; fly.toml's kill_timeout is
// 30 s, so this leaves a margin for the process to exit.
const drainTimeout = 25 * time.Second

func main() {
	cfg, err := app.FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "coap-server: configuration:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	// Without GOMEMLIMIT, a container's limit becomes the runtime's.
	memBytes, memFrom := memlimit.Apply()
	logger.Info("memory limit", "bytes", memBytes, "from", memFrom)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, cfg, logger, drainTimeout); err != nil {
		logger.Error("coap-server stopped", "err", err)
		os.Exit(1)
	}
}
