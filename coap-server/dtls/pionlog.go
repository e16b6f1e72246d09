package dtls

import (
	"context"

	"github.com/pion/logging"
)

// discardPionLogs silences pion's own logger: it would print to stderr
// outside slog, and every failure that matters is logged by session.
type discardPionLogs struct{}

func (discardPionLogs) NewLogger(string) logging.LeveledLogger { return nopLogger{} }

type nopLogger struct{}

func (nopLogger) Trace(string)          {}
func (nopLogger) Tracef(string, ...any) {}
func (nopLogger) Debug(string)          {}
func (nopLogger) Debugf(string, ...any) {}
func (nopLogger) Info(string)           {}
func (nopLogger) Infof(string, ...any)  {}
func (nopLogger) Warn(string)           {}
func (nopLogger) Warnf(string, ...any)  {}
func (nopLogger) Error(string)          {}
func (nopLogger) Errorf(string, ...any) {}

// contextBackground is the context of a PSK lookup: pion's callback has
// none, and the cache bounds the lookup with its own timeout.
func contextBackground() context.Context { return context.Background() }
