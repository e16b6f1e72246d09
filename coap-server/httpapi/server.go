package httpapi

import (
	"log/slog"
	"net/http"
	"time"
)

// Limits of NewHTTPServer. A client gets ReadHeaderTimeout to send its
// request headers (a slowloris holding sockets open is cut), at most
// MaxHeaderBytes of them (the relay's request is a bearer token and a few
// short headers) and IdleTimeout between keep-alive requests. There is no
// ReadTimeout or WriteTimeout: /ws connections live for hours and keep
// their own deadlines (ping/pong, write timeout).
const (
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 2 * time.Minute
	MaxHeaderBytes    = 16 << 10
)

// NewHTTPServer is the http.Server for h with the limits above, logging
// its errors at debug through log.
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}
