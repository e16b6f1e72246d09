package devset

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/testwait"
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

// RefreshSoon re-reads the list at once instead of at the next interval
// (an hour here): in Postgres mode a key's notification calls it, so plain
// CoAP stops speaking for a device as soon as it has a key, not up to 5 s
// later. (Found in an audit.)
func TestRefreshSoonReadsTheListAtOnce(t *testing.T) {
	var mu sync.Mutex
	ids := []string{"dev-a"}
	l := func(context.Context) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ids), nil
	}
	s := New(Credentialed, l, time.Hour, "", slog.New(slog.DiscardHandler))
	s.Start(context.Background())
	defer s.Close()
	if has, known := s.Has("dev-b"); has || !known {
		t.Fatalf("dev-b before its key: has %v, known %v", has, known)
	}
	mu.Lock()
	ids = append(ids, "dev-b")
	mu.Unlock()
	s.RefreshSoon()
	testwait.For(t, "dev-b listed", func() bool { has, _ := s.Has("dev-b"); return has })
}

// A table with more than MaxIDs devices is refused whole: the set keeps
// its last list. It was cut at MaxIDs, so that a keyed device past the cut
// was taken for one without a key, and plain CoAP could speak for it.
// (Found in an audit.)
func TestMoreThanMaxIDsKeepsTheLastList(t *testing.T) {
	var mu sync.Mutex
	ids := []string{"K1"}
	l := Lister(func(context.Context) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return ids, nil
	})
	c := New(Credentialed, l, 0, t.TempDir(), slog.New(slog.DiscardHandler))
	c.Start(context.Background())
	defer c.Close()
	long := make([]string, MaxIDs+1)
	for i := range long {
		long[i] = "D" + strconv.Itoa(i)
	}
	long[MaxIDs] = "KEYED-LAST"
	mu.Lock()
	ids = long
	mu.Unlock()
	if err := c.refresh(context.Background()); !errors.Is(err, ErrTooMany) {
		t.Fatalf("refresh of %d IDs: %v, want ErrTooMany", len(long), err)
	}
	if has, known := c.Has("K1"); !has || !known {
		t.Fatalf("the last list is gone: K1 has=%v known=%v", has, known)
	}
	// At a first start there is no last list: nothing is known (5.03),
	// rather than a cut one.
	fresh := New(Credentialed, l, 0, t.TempDir(), slog.New(slog.DiscardHandler))
	fresh.Start(context.Background())
	defer fresh.Close()
	if _, known := fresh.Has("KEYED-LAST"); known {
		t.Fatal("a list longer than MaxIDs was used")
	}
}

// Two instances (NATS_URL) sharing a DATA_DIR save their lists while a
// third starts and reads the file: every read is one of the lists, whole.
// With one fixed temporary name, one instance's rename could move the
// other's file while it was still being written, and a read took part
// of a list.
func TestConcurrentWritesLeaveAWholeList(t *testing.T) {
	dir := t.TempDir()
	lists := [][]string{{}, {}}
	for i := range 20000 {
		lists[i%2] = append(lists[i%2], "DEV-"+strconv.Itoa(i%2)+"-"+strconv.Itoa(100000+i))
	}
	sets := []*Set{New(Credentialed, nil, 0, dir, nil), New(Credentialed, nil, 0, dir, nil)}
	sets[0].writeFile(lists[0])
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, s := range sets {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					s.writeFile(lists[i])
				}
			}
		})
	}
	reader := New(Credentialed, nil, 0, dir, nil)
	for read := range 300 {
		got, err := reader.readFile()
		if err == nil && !slices.Equal(got, lists[0]) && !slices.Equal(got, lists[1]) {
			err = fmt.Errorf("read %d IDs, neither list whole (%d each)", len(got), len(lists[0]))
		}
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("read %d: %v", read, err)
		}
	}
	close(stop)
	wg.Wait()
}
