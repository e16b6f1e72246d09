package dtls

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// gatedLoader is a flakyLoader whose LoadPSK reads the row, says so on
// read, and returns what it read only once release is closed: a slow
// query racing a commit.
type gatedLoader struct {
	flakyLoader
	read    chan struct{}
	release chan struct{}
}

func (g *gatedLoader) LoadPSK(ctx context.Context, id string) ([]byte, error) {
	psk, err := g.flakyLoader.LoadPSK(ctx, id)
	g.read <- struct{}{}
	<-g.release
	return psk, err
}

// A lookup that read the old key before a change was applied (Refresh or
// LISTEN) used to store it over the change when it returned: the replaced
// key came back, fresh for TTL, and a deleted one came back to life,
// until the next re-read. What the change left now stays, and is what the
// late lookup serves.
func TestLookupRacingAKeyChangeKeepsTheChange(t *testing.T) {
	old, rotated := []byte("old-key-0123456789ab"), []byte("new-key-0123456789ab")
	tests := []struct {
		name    string
		change  func(keys map[string][]byte)
		wantKey []byte // nil: the identity is unknown
	}{
		{"replaced", func(keys map[string][]byte) { keys["dev"] = rotated }, rotated},
		{"deleted", func(keys map[string][]byte) { delete(keys, "dev") }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t: time.Unix(1e9, 0)}
			g := &gatedLoader{
				flakyLoader: flakyLoader{keys: map[string][]byte{"dev": old}},
				read:        make(chan struct{}, 1), release: make(chan struct{}),
			}
			k := NewKeyCache(g, KeyCacheConfig{TTL: time.Minute, Now: c.Now}, NewMetrics(prometheus.NewRegistry()), nil)
			ctx := context.Background()
			close(g.release)
			if _, err := k.PSK(ctx, "dev"); err != nil {
				t.Fatal(err)
			}
			<-g.read
			c.Add(2 * time.Minute) // expired: the next handshake reads the database
			g.release = make(chan struct{})

			type result struct {
				psk []byte
				err error
			}
			late := make(chan result, 1)
			go func() { psk, err := k.PSK(ctx, "dev"); late <- result{psk, err} }()
			<-g.read // it read the old key
			g.set(func() { tt.change(g.keys) })
			if err := k.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			close(g.release)
			r := <-late
			check := func(what string, psk []byte, err error) {
				t.Helper()
				if tt.wantKey == nil {
					if !errors.Is(err, ErrUnknownDevice) {
						t.Errorf("%s: %q, %v; want ErrUnknownDevice", what, psk, err)
					}
					return
				}
				if err != nil || !bytes.Equal(psk, tt.wantKey) {
					t.Errorf("%s: %q, %v; want %q", what, psk, err, tt.wantKey)
				}
			}
			check("the late lookup", r.psk, r.err)
			psk, err := k.PSK(ctx, "dev") // a hit, or the negative entry: no query
			check("the next lookup", psk, err)
		})
	}
}

// A lookup that reloads an expired key and finds another one is a
// replacement: counted, numbered and told to OnChange, which closes the
// sessions made with the old key. It was stored silently, and the next
// Refresh, seeing the new key already cached, saw no change: an old-key
// session stayed open for good.
func TestReloadFindingAnotherKeyIsAReplacement(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	m := NewMetrics(prometheus.NewRegistry())
	l := &mapLoader{keys: map[string][]byte{"dev": []byte("old-key-0123456789ab")}}
	k := NewKeyCache(l, KeyCacheConfig{TTL: time.Minute, Now: c.Now}, m, nil)
	var told []string
	k.OnChange(func(id string) { told = append(told, id) })
	ctx := context.Background()
	if _, err := k.PSK(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	mark := k.changeMark()
	l.keys["dev"] = []byte("new-key-0123456789ab")
	c.t = c.t.Add(2 * time.Minute) // expired: the next handshake reloads it
	if key, err := k.PSK(ctx, "dev"); err != nil || string(key) != "new-key-0123456789ab" {
		t.Fatalf("PSK after the reload: %q %v", key, err)
	}
	if len(told) != 1 || told[0] != "dev" {
		t.Errorf("OnChange told %v, want [dev]", told)
	}
	if !k.changedSince("dev", mark) {
		t.Error("a handshake begun before the reload does not see the change")
	}
	if got := testutil.ToFloat64(m.KeyChanges.WithLabelValues("replaced")); got != 1 {
		t.Errorf("key_changes{replaced} = %v, want 1", got)
	}
}
