package dtls

import (
	"bytes"
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

// get reads rows of device_credentials matching q into rows (a pointer
// to a slice), reading at most limit bytes of the answer. Errors name the
// table and never the key (it travels in a header, not the URL).
func (r RESTKeys) get(ctx context.Context, q url.Values, limit int64, rows any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.BaseURL+"/rest/v1/device_credentials?"+q.Encode(), nil)
	if err != nil {
		return fmt.Errorf("device_credentials: %w", err)
	}
	supa.SetKey(req.Header, r.ServiceKey)
	resp, err := r.Client.Do(req)
	if err != nil {
		return fmt.Errorf("device_credentials: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return fmt.Errorf("device_credentials: read: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("device_credentials: HTTP %d", resp.StatusCode)
	}
	if err := json.Unmarshal(body, rows); err != nil {
		return fmt.Errorf("device_credentials: decode: %w", err)
	}
	if bytes.Equal(bytes.TrimSpace(body), []byte("null")) {
		// null decodes as no rows: taken as an answer, LoadPSKs would
		// delete every key it was asked for, LoadPSK call the device unknown.
		return fmt.Errorf("device_credentials: decode: null, want a list")
	}
	return nil
}

// LoadPSK implements KeyLoader.
func (r RESTKeys) LoadPSK(ctx context.Context, deviceID string) ([]byte, error) {
	var rows []struct {
		PSK string `json:"psk"`
	}
	if err := r.get(ctx, url.Values{"select": {"psk"}, "devid": {"eq." + deviceID}}, 64<<10, &rows); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, ErrUnknownDevice
	}
	return DecodeBytea(rows[0].PSK)
}

// LoadPSKs implements BatchLoader. Device IDs are [A-Za-z0-9_-] only
// (ParseIdentity), so they need no quoting in PostgREST's in.() list.
func (r RESTKeys) LoadPSKs(ctx context.Context, ids []string) (map[string][]byte, error) {
	var rows []struct {
		DevID string `json:"devid"`
		PSK   string `json:"psk"`
	}
	q := url.Values{"select": {"devid,psk"}, "devid": {"in.(" + strings.Join(ids, ",") + ")"}}
	if err := r.get(ctx, q, 1<<20, &rows); err != nil {
		return nil, err
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
		// Not hex's own error: it quotes the offending character, a
		// character of a key.
		return nil, fmt.Errorf("bytea: not hex (%d characters after \\x)", len(h))
	}
	return b, nil
}
