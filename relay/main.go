// Command relay serves the browser's Live Logs: GET /device-logs?deviceId=
// upgrades to a WebSocket carrying the device's live-log frames from
// coap-server, for signed-in Supabase users who may see that device.
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

	"github.com/nbiot-live/nbiot-live/internal/memlimit"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

// drainTimeout is how long shutdown may take: closing browsers and
// upstream links is quick; it stays under a platform's 30 s kill timeout.
const drainTimeout = 10 * time.Second

func main() {
	cfg, err := app.FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay: configuration:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	// Without GOMEMLIMIT, a container's limit becomes the runtime's.
	memBytes, memFrom := memlimit.Apply()
	logger.Info("memory limit", "bytes", memBytes, "from", memFrom)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, cfg, logger, drainTimeout); err != nil {
		logger.Error("relay stopped", "err", err)
		os.Exit(1)
	}
}
