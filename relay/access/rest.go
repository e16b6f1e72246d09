package access

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/nbiot-live/nbiot-live/internal/supa"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// maxRESTBody bounds the answer read from PostgREST: one row is ~20 bytes.
const maxRESTBody = 64 << 10

// REST checks access through Supabase's REST API (PostgREST) with the
// user's own token, so the same RLS policies decide:
// GET <SUPABASE_URL>/rest/v1/devices?select=devid&devid=eq.<id>.
type REST struct {
	// BaseURL is SUPABASE_URL without a trailing slash.
	BaseURL string
	// APIKey is the anon JWT or an sb_publishable_ key, sent as apikey only:
	// the user's token is the Authorization (internal/supa's rule,
	// docs/pitfalls.md#postgrest-go).
	APIKey string
	// Client has a timeout; the check's context bounds it too.
	Client *http.Client
}

// Check implements Checker.
func (r *REST) Check(ctx context.Context, _ *auth.Claims, token, deviceID string) error {
	u := r.BaseURL + "/rest/v1/devices?select=devid&limit=1&devid=eq." + url.QueryEscape(deviceID)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("%w: request: %v", ErrUnavailable, err)
	}
	supa.SetUserToken(req.Header, r.APIKey, token)
	resp, err := r.Client.Do(req)
	if err != nil {
		// *url.Error quotes the URL; it holds no secret (the token is a header).
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxRESTBody)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(body)
		return restError(resp.StatusCode, b)
	}
	var rows []struct {
		DevID string `json:"devid"`
	}
	if err := json.NewDecoder(body).Decode(&rows); err != nil {
		return fmt.Errorf("%w: rest body: %v", ErrUnavailable, err)
	}
	for _, row := range rows {
		if row.DevID == deviceID {
			return nil
		}
	}
	return ErrDenied
}

// restError is what a PostgREST answer other than 200 means. Row level
// security hides rows (200 with []) and never refuses: a 403 is PostgREST's
// "permission denied" (42501), a grant on public.devices missing for role
// authenticated, which is the deployment's fault and not the user's, so it
// is unavailable, never a denial (cached, and a re-check's denial ends
// every session). A 401 refuses the token itself, unless it is Supabase's
// gateway refusing the relay's own API key (supa.APIKeyRefused): then the
// relay's SUPABASE_ANON_KEY is wrong, and no user can be let in, whoever
// signs in again. Taken for the user's token, it sent every browser to
// sign in again, and the operator was told nothing.
func restError(status int, body []byte) error {
	switch {
	case status == http.StatusUnauthorized && supa.APIKeyRefused(body):
		return fmt.Errorf("%w: rest status %d (Supabase refuses the API key: check SUPABASE_ANON_KEY)", ErrUnavailable, status)
	case status == http.StatusUnauthorized:
		return fmt.Errorf("%w: rest status %d", ErrTokenRefused, status)
	case status == http.StatusForbidden:
		return fmt.Errorf("%w: rest status %d (permission denied: is select on public.devices granted to authenticated?)", ErrUnavailable, status)
	default:
		return fmt.Errorf("%w: rest status %d", ErrUnavailable, status)
	}
}
