package app_test

import (
	"net/http"
	"strings"
	"testing"
)

// Request headers past 32 KiB are refused (431) before any handler runs.
func TestRelayHeaderSizeLimit(t *testing.T) {
	c := startCoAP(t, "", "")
	r := startRelay(t, c, map[string]string{"AUTH_DISABLED": "true"}, nil)
	req, _ := http.NewRequest("GET", "http://"+r.HTTPAddr().String()+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("HTTP %d, want 431", resp.StatusCode)
	}
}
