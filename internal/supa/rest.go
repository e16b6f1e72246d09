package supa

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Source says where coap-server's device data lives: DATABASE_URL (wins)
// or SUPABASE_URL with the service key. coap-server fills it from its
// configuration.
type Source struct {
	DatabaseURL string
	SupabaseURL string
	ServiceKey  string // never logged
}

// RESTTimeout bounds one REST call of RESTClient.
const RESTTimeout = 10 * time.Second

// RESTIdleConns is how many idle connections to Supabase RESTClient keeps:
// the key re-read sends 8 queries at once (coap-server/dtls), and Go's
// default keeps 2 per host, so most of them would set up a new TLS
// connection on every pass.
const RESTIdleConns = 16

// restTransport is shared by every RESTClient, like http.DefaultTransport,
// with room for RESTIdleConns idle connections per host.
var restTransport = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = RESTIdleConns
	return t
}()

// RESTClient is the HTTP client for small Supabase REST reads and writes:
// every request is bounded (supabase-go's client has no timeout,
// docs/pitfalls.md#postgrest-go).
func RESTClient() *http.Client {
	return &http.Client{Timeout: RESTTimeout, Transport: restTransport}
}

// APIKeyRefused reports whether a 401's body is Supabase's gateway refusing
// the API key sent as apikey (`{"message":"Invalid API key",…}`, or "No
// API key found in request"), before PostgREST reads any user token: the
// key in the configuration is wrong, whoever the user is.
func APIKeyRefused(body []byte) bool {
	var e struct{ Message string }
	return json.Unmarshal(body, &e) == nil && strings.Contains(strings.ToLower(e.Message), "api key")
}

// ErrKeyRefused is ProbeKey's answer for an API key the gateway refuses.
var ErrKeyRefused = errors.New("Supabase refuses the API key")

// ProbeKey asks SUPABASE_URL's REST endpoint for one row of table with
// key alone, as a start checks its configuration: ErrKeyRefused when the
// gateway refuses the key; another error when it cannot tell (the project
// unreachable, paused: a 5xx); nil for any other answer, which the key got
// past the gateway for (rows, none, or PostgREST's own refusal of an anon
// key's select). The error never holds the key.
func ProbeKey(ctx context.Context, client *http.Client, baseURL, key, table string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/rest/v1/"+table+"?select=*&limit=1", nil)
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	SetKey(req.Header, key)
	resp, err := client.Do(req)
	if err != nil {
		return err // *url.Error quotes the URL, which holds no secret
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusUnauthorized && APIKeyRefused(body):
		return ErrKeyRefused
	case resp.StatusCode >= 500:
		return fmt.Errorf("REST answered %d", resp.StatusCode)
	default:
		return nil
	}
}
