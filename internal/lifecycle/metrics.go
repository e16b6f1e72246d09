package lifecycle

import (
	"fmt"
	"log/slog"
	"net"
)

// ListenMetrics binds METRICS_ADDR for both binaries. It returns a nil
// listener when metrics are off ("" or "off"), or when the default
// address (explicit false) is taken, so two programs on one development
// machine both start; an address the operator set must bind.
func ListenMetrics(addr string, explicit bool, logger *slog.Logger) (net.Listener, error) {
	if addr == "" || addr == "off" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if explicit {
			return nil, fmt.Errorf("METRICS_ADDR: listen: %w", err)
		}
		logger.Warn("metrics listener not started: its default address is taken (set METRICS_ADDR)", "addr", addr, "err", err)
		return nil, nil
	}
	logger.Info("metrics listening", "addr", ln.Addr().String())
	return ln, nil
}
