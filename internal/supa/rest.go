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

// RESTClient is the HTTP client for small Supabase REST reads and writes:
// every request is bounded (supabase-go's client has no timeout,
// docs/pitfalls.md#postgrest-go).
func RESTClient() *http.Client {
	return &http.Client{Timeout: RESTTimeout}
}
