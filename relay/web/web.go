// Package web serves the relay's Live Logs page at / and its assets under
// /static/. The page is plain HTML, JS and CSS embedded in the binary: no
// build step, no CDN, so it works offline and is versioned with the relay.
// static/livelogs.js is also the module an existing frontend embeds to follow
// a device's live log (see the README).
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// contentSecurityPolicy allows only the page's own files and a connection
// back to its own origin (CSP3 'self' covers ws: and wss: on the same host):
// entries are drawn with textContent, and this is the second fence should a
// bug ever let markup through. frame-ancestors stops clickjacking of the
// sign-in form.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Handler serves GET / (the page) and GET /static/* (its assets); other
// paths are 404. Mount it as the relay's catch-all route.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(index)
	})
	files := http.StripPrefix("/static/", http.FileServerFS(sub))
	mux.Handle("GET /static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Public files without credentials: an existing frontend on another
		// origin may import livelogs.js straight from the relay (module
		// scripts are fetched with CORS).
		w.Header().Set("Access-Control-Allow-Origin", "*")
		files.ServeHTTP(w, r)
	}))
	return headers(mux)
}

// headers sets what every response of the page needs. no-referrer: the page
// may have been opened with ?access_token=, which must never leave in a
// Referer. no-cache: embedded files have no modification time, and a new
// relay version must not run an old script.
func headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		next.ServeHTTP(w, r)
	})
}
