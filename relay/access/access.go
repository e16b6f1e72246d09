// Package access decides whether a signed-in user may watch a device. The
// database's own row level security decides: the user must be able to read
// the device's row in public.devices, checked either directly in Postgres
// (as role authenticated with the user's claims, the way PostgREST runs a
// request) or through Supabase REST with the user's token. Answers are
// cached briefly and checks run with bounded concurrency.
package access

import (
	"context"
	"errors"

	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// Sentinel errors. The HTTP edge maps ErrDenied to 403, ErrUnavailable
// to 503, ErrTokenRefused to 401 and ErrLimited to 429.
var (
	ErrDenied      = errors.New("access: device not visible to this user")
	ErrUnavailable = errors.New("access: check unavailable")
	// ErrTokenRefused: the backend refused the user's token although the
	// relay accepted it (Supabase REST's 401: expired inside the relay's
	// leeway, or a clock apart). It says nothing about the device, so it
	// is never cached: the user's next token is asked about afresh.
	ErrTokenRefused = errors.New("access: the database refused the token")
	// ErrLimited: the answer was not cached and the caller's budget of
	// backend checks is spent (Cached.CheckGated).
	ErrLimited = errors.New("access: too many uncached checks")
)

// Checker answers one access question: nil when the user may read the
// device, an error wrapping ErrDenied when not, and one wrapping
// ErrUnavailable when the backend could not answer.
type Checker interface {
	Check(ctx context.Context, c *auth.Claims, token, deviceID string) error
}

// CheckerFunc adapts a function to Checker.
type CheckerFunc func(ctx context.Context, c *auth.Claims, token, deviceID string) error

// Check implements Checker.
func (f CheckerFunc) Check(ctx context.Context, c *auth.Claims, token, deviceID string) error {
	return f(ctx, c, token, deviceID)
}
