package dtls

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/nbiot-live/nbiot-live/internal/supa"
)

// RESTKeys reads PSKs from device_credentials through Supabase's REST API
// (SUPABASE_URL mode) with the service key, which bypasses RLS. Client must
// have a timeout (docs/pitfalls.md#postgrest-go: supabase-go has none, so plain net/http is used).
type RESTKeys struct {
	BaseURL    string // SUPABASE_URL, no trailing slash
	ServiceKey string // service_role JWT or sb_secret_ key; never logged
	Client     *http.Client
}

// LoadPSK implements KeyLoader.
func (r RESTKeys) LoadPSK(ctx context.Context, deviceID string) ([]byte, error) {
	q := url.Values{"select": {"psk"}, "devid": {"eq." + deviceID}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.BaseURL+"/rest/v1/device_credentials?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("device_credentials: %w", err)
	}
	supa.SetKey(req.Header, r.ServiceKey)
	resp, err := r.Client.Do(req)
	if err != nil {
		// The error names the URL, which holds no secret (the key is a header).
		return nil, fmt.Errorf("device_credentials: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("device_credentials: read: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("device_credentials: HTTP %d", resp.StatusCode)
	}
	var rows []struct {
		PSK string `json:"psk"`
	}
	if err := json.Unmarshal(body, &rows); err != nil {
		return nil, fmt.Errorf("device_credentials: decode: %w", err)
	}
	if len(rows) == 0 {
		return nil, ErrUnknownDevice
	}
	return DecodeBytea(rows[0].PSK)
}

// LoadPSKs implements BatchLoader. Device IDs are [A-Za-z0-9_-] only
// (ParseIdentity), so they need no quoting in PostgREST's in.() list.
func (r RESTKeys) LoadPSKs(ctx context.Context, ids []string) (map[string][]byte, error) {
	q := url.Values{"select": {"devid,psk"}, "devid": {"in.(" + strings.Join(ids, ",") + ")"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.BaseURL+"/rest/v1/device_credentials?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("device_credentials: %w", err)
	}
	supa.SetKey(req.Header, r.ServiceKey)
	resp, err := r.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("device_credentials: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("device_credentials: read: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("device_credentials: HTTP %d", resp.StatusCode)
	}
	var rows []struct {
		DevID string `json:"devid"`
		PSK   string `json:"psk"`
	}
	if err := json.Unmarshal(body, &rows); err != nil {
		return nil, fmt.Errorf("device_credentials: decode: %w", err)
	}
	out := make(map[string][]byte, len(rows))
	for _, row := range rows {
		psk, err := DecodeBytea(row.PSK)
		if err != nil {
			return nil, err
		}
		out[row.DevID] = psk
	}
	return out, nil
}

// DecodeBytea decodes PostgREST's JSON form of a bytea ("\x0a1b…").
func DecodeBytea(s string) ([]byte, error) {
	h, ok := strings.CutPrefix(s, `\x`)
	if !ok {
		return nil, fmt.Errorf("bytea: want \\x-prefixed hex")
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return nil, fmt.Errorf("bytea: %w", err)
	}
	return b, nil
}
