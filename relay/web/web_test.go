package web_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/relay/web"
)

func TestHandlerRoutes(t *testing.T) {
	srv := httptest.NewServer(web.Handler())
	t.Cleanup(srv.Close)
	cases := []struct {
		name, method, path string
		status             int
		ctype, contains    string
	}{
		{"page", "GET", "/", 200, "text/html", `<script type="module" src="static/app.js">`},
		{"page with device and token", "GET", "/?deviceId=ABC123&access_token=x.y.z", 200, "text/html", "Live Logs"},
		{"embeddable module", "GET", "/static/livelogs.js", 200, "text/javascript", "export function connectLiveLogs("},
		{"page script", "GET", "/static/app.js", 200, "text/javascript", "const PAGE = 200"},
		{"renderer", "GET", "/static/render.js", 200, "text/javascript", "export function renderEntry("},
		{"styles", "GET", "/static/style.css", 200, "text/css", "#entries"},
		{"unknown asset", "GET", "/static/nope.js", 404, "", ""},
		{"unknown path", "GET", "/index.php", 404, "", ""},
		{"no directory escape", "GET", "/static/../web.go", 404, "", ""},
		{"post", "POST", "/", 405, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, err := http.NewRequest(c.method, srv.URL+c.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
			}
			if !strings.HasPrefix(resp.Header.Get("Content-Type"), c.ctype) {
				t.Errorf("Content-Type %q, want %q", resp.Header.Get("Content-Type"), c.ctype)
			}
			if !strings.Contains(string(body), c.contains) {
				t.Errorf("body does not contain %q", c.contains)
			}
			if c.status == 200 && strings.HasPrefix(c.path, "/static/") && resp.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Error("static assets need Access-Control-Allow-Origin: * so that another origin can import livelogs.js")
			}
			if c.status == 200 {
				if got := resp.Header.Get("Referrer-Policy"); got != "no-referrer" {
					t.Errorf("Referrer-Policy %q: a token in the address must never leave in a Referer", got)
				}
				if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self'") {
					t.Errorf("Content-Security-Policy %q", csp)
				}
			}
		})
	}
}

// The page must work offline: no asset may point at another origin.
func TestPageHasNoRemoteAssets(t *testing.T) {
	srv := httptest.NewServer(web.Handler())
	t.Cleanup(srv.Close)
	for _, p := range []string{"/", "/static/app.js", "/static/livelogs.js", "/static/render.js", "/static/model.js", "/static/export.js", "/static/style.css"} {
		resp, err := srv.Client().Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		for _, bad := range []string{"http://", "https://cdn", "//fonts.", "@import url(http", ".innerHTML", "insertAdjacentHTML", "eval("} {
			if strings.Contains(string(body), bad) {
				t.Errorf("%s contains %q", p, bad)
			}
		}
	}
}
