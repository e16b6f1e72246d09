// Package web serves the relay's Live Logs page at /.
package web

import "net/http"

// Handler serves the page and its assets.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte("<!doctype html><title>nbiot-live</title><p>Live Logs page: coming soon.</p>\n"))
	})
}
