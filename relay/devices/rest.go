package devices

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/nbiot-live/nbiot-live/internal/supa"
	"github.com/nbiot-live/nbiot-live/relay/access"
	"github.com/nbiot-live/nbiot-live/relay/auth"
)

// maxRESTBody bounds the answer read: 501 rows of ~150 bytes.
const maxRESTBody = 256 << 10

// REST lists devices through Supabase's REST API (PostgREST) with the
// user's own token, so the same RLS policies decide:
// GET <SUPABASE_URL>/rest/v1/devices?select=devid,name,last_seen_at&order=...&limit=N.
type REST struct {
	// BaseURL is SUPABASE_URL without a trailing slash.
	BaseURL string
	// APIKey is the anon JWT or an sb_publishable_ key, sent as apikey; the
	// user's token is the Authorization.
	APIKey string
	// Client has a timeout; ctx bounds it too.
	Client *http.Client
}

// List implements Lister. PostgREST refusing the token gives an error
// wrapping access.ErrTokenRefused; a 403 (a grant missing) is an error.
func (r *REST) List(ctx context.Context, _ *auth.Claims, token string, limit int) ([]Device, error) {
	q := url.Values{}
	q.Set("select", "devid,name,last_seen_at")
	q.Set("order", "last_seen_at.desc.nullslast,devid.asc")
	q.Set("limit", strconv.Itoa(limit+1))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.BaseURL+"/rest/v1/devices?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("devices: request: %w", err)
	}
	supa.SetUserToken(req.Header, r.APIKey, token)
	resp, err := r.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("devices: %w", err) // the token is a header, not in the URL
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxRESTBody)
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusUnauthorized:
		b, _ := io.ReadAll(body)
		if supa.APIKeyRefused(b) {
			return nil, fmt.Errorf("devices: rest status %d (Supabase refuses the API key: check SUPABASE_ANON_KEY)", resp.StatusCode)
		}
		return nil, fmt.Errorf("%w: rest status %d", access.ErrTokenRefused, resp.StatusCode)
	default:
		_, _ = io.Copy(io.Discard, body)
		return nil, fmt.Errorf("devices: rest status %d", resp.StatusCode)
	}
	var out []Device
	if err := json.NewDecoder(body).Decode(&out); err != nil {
		return nil, fmt.Errorf("devices: rest body: %w", err)
	}
	return out, nil
}
