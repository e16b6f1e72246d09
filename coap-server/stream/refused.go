package stream

import (
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// A NATS that refuses coap-server's credentials while it runs: a user JWT
// that expired (the server ends the connection at its expiry), a revoked
// one, a password changed on the server. By default nats.go stops
// reconnecting for good after the same refusal twice, which left the
// engine unready (every uplink 5.03) until a restart, even once the
// credentials were fixed. Each connection keeps trying instead, reading
// NATS_CREDS, NATS_CERT and NATS_KEY again at each attempt when they are
// paths (authOptions), so that replacing the files is enough. While
// refused it waits longer between attempts, up to refusedMaxWait, so as
// not to knock at a hosted NATS several times a second; it logs the
// refusal when it changes, and at most once a refusedLogEvery otherwise.
//
// A user let in may still be refused a subject (its permissions: a hosted
// NATS's user made for another application). The server then drops the
// publish or subscription with a "permissions violation", which nats.go
// reports only to this handler: the uplinks got 5.03 after AckTimeout and
// nothing said why. It is logged the same way, with what the user needs,
// and counted (PermissionErrors).

// reconnectWait is the wait between two attempts to reach NATS again
// after a loss (an outage, a restart, a leader moving).
const reconnectWait = 250 * time.Millisecond

const (
	refusedMaxWait  = 5 * time.Second
	refusedLogEvery = time.Minute
)

// refusals is what one connection knows of its refusals.
type refusals struct {
	name    string // the connection's, for the log
	log     *slog.Logger
	total   *atomic.Int64 // the engine's count (AuthErrors)
	denied  *atomic.Int64 // the engine's count of permission violations
	count   atomic.Int64  // this connection's
	failing atomic.Int32  // refusals since the last connect

	mu       sync.Mutex
	logged   string // the refusal last logged, and when
	loggedAt time.Time
}

// isRefusal reports whether err is the server refusing the credentials.
func isRefusal(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}

// options are the connection's handlers; onReconnect runs after each
// reconnection, as nats.ReconnectHandler's would.
func (r *refusals) options(onReconnect func()) []nats.Option {
	return []nats.Option{
		nats.IgnoreAuthErrorAbort(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { r.note(err) }),
		nats.CustomReconnectDelay(r.wait),
		nats.ReconnectHandler(func(*nats.Conn) {
			r.failing.Store(0)
			onReconnect()
		}),
	}
}

// userPermissions is what coap-server's NATS user needs.
const userPermissions = "publish on nbiot.>, $JS.API.>, $JS.ACK.> and $JS.FC.>, and subscribe on nbiot.notify.> and _INBOX.>"

// The warnings of note.
const (
	refusedWarning = "nats: the server refuses coap-server's credentials; trying again, uplinks get 5.03 until it lets us in (replace the file NATS_CREDS names, or NATS_CERT and NATS_KEY, or check the user in NATS_URL)"
	deniedWarning  = "nats: the server refuses coap-server's user a subject; uplinks get 5.03 while it does. The user needs to " + userPermissions + " (check its permissions on the NATS server or account)"
)

// note counts and logs a refusal or a permission violation; other
// asynchronous errors are not its business.
func (r *refusals) note(err error) {
	warning := refusedWarning
	switch {
	case isRefusal(err):
		r.count.Add(1)
		r.total.Add(1)
		r.failing.Add(1)
	case errors.Is(err, nats.ErrPermissionViolation):
		warning = deniedWarning
		if r.denied != nil {
			r.denied.Add(1)
		}
	default:
		return
	}
	msg := err.Error() // nats.go's own words: they name no credential
	r.mu.Lock()
	now := time.Now()
	quiet := msg == r.logged && now.Sub(r.loggedAt) < refusedLogEvery
	if !quiet {
		r.logged, r.loggedAt = msg, now
	}
	r.mu.Unlock()
	if !quiet {
		r.log.Warn(warning, "connection", r.name, "err", msg)
	}
}

// wait is the delay before the next attempt: reconnectWait after a loss,
// doubling with each refusal up to refusedMaxWait, with a tenth of it at
// random so that many instances refused at once do not come back together.
func (r *refusals) wait(int) time.Duration {
	d := reconnectWait
	for n := r.failing.Load(); n > 0 && d < refusedMaxWait; n-- {
		d *= 2
	}
	d = min(d, refusedMaxWait)
	return d + rand.N(d/10+1)
}
