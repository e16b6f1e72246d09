// Package logtest captures logs in tests, e.g. to prove that no secret
// reaches them.
package logtest

import (
	"bytes"
	"sync"
)

// Buffer is a log sink safe for concurrent writers (slog handlers called
// from many goroutines).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
