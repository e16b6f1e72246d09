// Package devices serves GET /devices: the devices the signed-in user may
// see (for the Live Logs page's picker), with their names and last-seen
// times. The rows are read under the same RLS policies as everything else
// the user reads: in Postgres as role authenticated with the user's claims
// (as PostgREST does), or through Supabase REST with the user's own token.
package devices

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// Limit bounds the devices one answer lists (newest seen first); beyond it
// the answer is cut and X-Devices-Truncated: true says so.
const Limit = 500

// listTimeout bounds one read of the database or REST.
const listTimeout = 5 * time.Second

// Device is one entry of the answer.
type Device struct {
	DevID      string     `json:"devid"`
	Name       *string    `json:"name"`
	LastSeenAt *time.Time `json:"last_seen_at"`
}

// Lister reads the devices visible to the user (claims, or their raw
// token for REST), at most limit+1 so that a cut can be told.
type Lister interface {
	List(ctx context.Context, c *auth.Claims, token string, limit int) ([]Device, error)
}

// Verifier verifies a user's access token (*auth.Verifier).
type Verifier interface {
	Verify(ctx context.Context, token string) (*auth.Claims, error)
}

// Options configure New. Verifier nil (AUTH_DISABLED) or no backend makes
// the endpoint answer 404: there is no user to list devices for.
type Options struct {
	Verifier Verifier
	// Postgres, when set (DATABASE_URL), is used; else REST when RESTURL
	// (SUPABASE_URL) and APIKey (the anon or publishable key) are set.
	Postgres *access.Postgres
	RESTURL  string
	APIKey   string
	Logger   *slog.Logger
	// Allow, when set, is asked before each read with the verified user
	// (the token's sub): false answers 429 without reading (a read is a
	// database query, which the relay's access checks need too).
	Allow func(r *http.Request, user string) bool
	// Registerer gets nbiot_relay_devices_truncated_total,
	// nbiot_relay_devices_limited_total and
	// nbiot_relay_devices_rejected_total (may be nil).
	Registerer prometheus.Registerer
}

// Reasons of nbiot_relay_devices_rejected_total (429s have their own
// counter, nbiot_relay_devices_limited_total).
const (
	RejectNoToken     = "no_token"    // 401: no token in the request
	RejectBadToken    = "bad_token"   // 401: token too large or failing verification
	RejectDenied      = "denied"      // 401: the database refused the token
	RejectNotFound    = "not_found"   // 404: the relay has no sign-in
	RejectUnavailable = "unavailable" // 503: the devices could not be read
)

// Handler is the GET /devices endpoint.
type Handler struct {
	verifier  Verifier
	lister    Lister
	allow     func(*http.Request, string) bool
	log       *slog.Logger
	truncated prometheus.Counter
	limited   prometheus.Counter
	rejected  *prometheus.CounterVec
}

// New builds the handler from o.
func New(o Options) *Handler {
	h := &Handler{verifier: o.Verifier, allow: o.Allow, log: o.Logger}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.Postgres != nil:
		h.lister = Postgres{Pool: o.Postgres.Pool}
	case o.RESTURL != "" && o.APIKey != "":
		h.lister = &REST{BaseURL: o.RESTURL, APIKey: o.APIKey, Client: &http.Client{Timeout: listTimeout}}
	}
	h.truncated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nbiot_relay_devices_truncated_total",
		Help: "GET /devices answers cut at the limit (500 devices).",
	})
	h.limited = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nbiot_relay_devices_limited_total",
		Help: "GET /devices refused with 429: the user's or the address's budget of queries was spent.",
	})
	h.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nbiot_relay_devices_rejected_total",
		Help: "GET /devices refused, by reason (no_token, bad_token, denied: 401; not_found: 404, no sign-in; unavailable: 503). 429s are nbiot_relay_devices_limited_total.",
	}, []string{"reason"})
	// Every reason exists from the start, so a rate() sees its first one.
	for _, r := range []string{RejectNoToken, RejectBadToken, RejectDenied, RejectNotFound, RejectUnavailable} {
		h.rejected.WithLabelValues(r)
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(h.truncated, h.limited, h.rejected)
	}
	return h
}

// NewWith is New with a given lister (tests, other backends).
func NewWith(v Verifier, l Lister) *Handler {
	h := New(Options{Verifier: v})
	h.lister = l
	return h
}

// ServeHTTP answers 200 with a JSON array, 401 without a valid token
// (Authorization: Bearer, or access_token in the query), 404 when the relay
// has no sign-in, 429 past the caller's budget (Options.Allow), 503 when
// the devices cannot be read.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if h.verifier == nil || h.lister == nil {
		h.rejected.WithLabelValues(RejectNotFound).Inc()
		http.Error(w, "this relay has no sign-in: type a device ID", http.StatusNotFound)
		return
	}
	token, _, err := auth.FromRequest(r)
	if err != nil {
		reason := RejectBadToken // too large
		if errors.Is(err, auth.ErrNoToken) {
			reason = RejectNoToken
		}
		h.rejected.WithLabelValues(reason).Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="nbiot-live"`)
		http.Error(w, "sign in required", http.StatusUnauthorized)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), listTimeout)
	defer cancel()
	claims, err := h.verifier.Verify(ctx, token)
	if err != nil {
		h.rejected.WithLabelValues(RejectBadToken).Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="nbiot-live", error="invalid_token"`)
		http.Error(w, "sign in required: "+auth.Reason(err), http.StatusUnauthorized)
		return
	}
	if h.allow != nil && !h.allow(r, claims.Subject) {
		h.limited.Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many requests for this user or address, retry later", http.StatusTooManyRequests)
		return
	}
	list, err := h.lister.List(ctx, claims, token, Limit)
	switch {
	case errors.Is(err, access.ErrTokenRefused):
		h.rejected.WithLabelValues(RejectDenied).Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="nbiot-live", error="invalid_token"`)
		http.Error(w, "sign in required: the database refused the token", http.StatusUnauthorized)
		return
	case err != nil:
		h.rejected.WithLabelValues(RejectUnavailable).Inc()
		h.log.Warn("devices not listed", "user", claims.Subject, "err", err)
		http.Error(w, "devices unavailable, try again", http.StatusServiceUnavailable)
		return
	}
	if len(list) > Limit {
		list = list[:Limit]
		h.truncated.Inc()
		w.Header().Set("X-Devices-Truncated", "true")
	}
	if list == nil {
		list = []Device{}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}
