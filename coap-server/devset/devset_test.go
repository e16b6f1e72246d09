package devset

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
)

// The set's own logic (memory, file fallback) under a Lister from a
// function; the database listers are exercised by the app's whole-program
// tests in both storage modes.
func TestSetFallsBackToTheSavedList(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	ids, fail := []string{"K1", "K2"}, false
	l := Lister(func(context.Context) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errors.New("database down")
		}
		return ids, nil
	})
	log := slog.New(slog.DiscardHandler)
	c := New(Credentialed, l, 0, dir, log)
	if _, known := c.Has("K1"); known {
		t.Fatal("known before loading")
	}
	c.Start(context.Background())
	c.Close()
	if req, known := c.Has("K1"); !req || !known {
		t.Fatalf("K1: required=%v known=%v", req, known)
	}
	if req, _ := c.Has("PLAIN"); req {
		t.Fatal("PLAIN has no key")
	}
	// A restart while the database is down still knows the keyed devices.
	mu.Lock()
	fail = true
	mu.Unlock()
	again := New(Credentialed, l, 0, dir, log)
	again.Start(context.Background())
	defer again.Close()
	if req, known := again.Has("K2"); !req || !known {
		t.Fatalf("after a restart during an outage: K2 required=%v known=%v", req, known)
	}
	// Without a saved list, nothing is known: plain CoAP waits (5.03).
	blind := New(Credentialed, l, 0, t.TempDir(), log)
	blind.Start(context.Background())
	defer blind.Close()
	if _, known := blind.Has("K2"); known {
		t.Fatal("known without a database or a saved list")
	}
}
