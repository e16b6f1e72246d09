package dtls

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
)

// listFunc is a Lister from a function: the set's own logic (memory, file
// fallback) under test; the database listers are exercised by the app's
// whole-program tests in both storage modes.
type listFunc func(context.Context) ([]string, error)

func (f listFunc) ListCredentialed(ctx context.Context) ([]string, error) { return f(ctx) }

func TestCredentialedFallsBackToTheSavedList(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	ids, fail := []string{"K1", "K2"}, false
	l := listFunc(func(context.Context) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errors.New("database down")
		}
		return ids, nil
	})
	log := slog.New(slog.DiscardHandler)
	c := NewCredentialed(l, 0, dir, log)
	if _, known := c.Requires("K1"); known {
		t.Fatal("known before loading")
	}
	c.Start(context.Background())
	c.Close()
	if req, known := c.Requires("K1"); !req || !known {
		t.Fatalf("K1: required=%v known=%v", req, known)
	}
	if req, _ := c.Requires("PLAIN"); req {
		t.Fatal("PLAIN has no key")
	}
	// A restart while the database is down still knows the keyed devices.
	mu.Lock()
	fail = true
	mu.Unlock()
	again := NewCredentialed(l, 0, dir, log)
	again.Start(context.Background())
	defer again.Close()
	if req, known := again.Requires("K2"); !req || !known {
		t.Fatalf("after a restart during an outage: K2 required=%v known=%v", req, known)
	}
	// Without a saved list, nothing is known: plain CoAP waits (5.03).
	blind := NewCredentialed(l, 0, t.TempDir(), log)
	blind.Start(context.Background())
	defer blind.Close()
	if _, known := blind.Requires("K2"); known {
		t.Fatal("known without a database or a saved list")
	}
}
