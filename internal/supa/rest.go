package supa

import (
	"net/http"
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
