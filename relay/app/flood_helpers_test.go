package app_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	coapapp "github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

const restKey = "sb_publishable_flood_test_0123"

// floodEnv is a relay whose access checks go through Supabase REST
// (fakepostgrest on the real database) behind a given latency, with users
// user(0..n-1) each owning device dev(i), plus bob, who owns nothing.
type floodEnv struct {
	relay    *app.App
	coap     *coapapp.App
	iss      string
	db       string
	backend  atomic.Int64 // REST requests received
	inFlight atomic.Int64
	peak     atomic.Int64 // the most inFlight has been
}

func floodUser(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }
func floodDev(i int) string  { return fmt.Sprintf("FLD-%d", i) }

func newFloodEnv(t testing.TB, latency time.Duration, users int, env map[string]string, mutate func(*app.Config)) *floodEnv {
	t.Helper()
	db := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`insert into auth.users (id, email) select ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'u' || i || '@example.com' from generate_series(0, $1 - 1) i`,
		`insert into public.devices (devid, owner_id) select 'FLD-' || i, ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid from generate_series(0, $1 - 1) i`,
	} {
		if _, err := conn.Exec(ctx, q, users); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, "insert into auth.users (id, email) values ($1, 'bob@example.com')", bob); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	rest, err := fakepostgrest.New(ctx, db, fakepostgrest.Options{JWTSecret: []byte(jwtSecret), PublishableKey: restKey, MaxConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	f := &floodEnv{db: db}
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.backend.Add(1)
		for n := f.inFlight.Add(1); ; {
			p := f.peak.Load()
			if n <= p || f.peak.CompareAndSwap(p, n) {
				break
			}
		}
		defer f.inFlight.Add(-1)
		select { // the backend's latency (a Supabase REST round trip)
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
		rest.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { slow.Close(); rest.Close() })
	f.iss = slow.URL + "/auth/v1"
	e := map[string]string{"SUPABASE_URL": slow.URL, "SUPABASE_ANON_KEY": restKey, "SUPABASE_JWT_SECRET": jwtSecret, "TRUSTED_PROXY_HEADER": "Fly-Client-IP"}
	for k, v := range env {
		e[k] = v
	}
	f.coap = startCoAP(t, "", "")
	f.relay = startRelay(t, f.coap, e, mutate)
	return f
}

func (f *floodEnv) token(t testing.TB, sub string) string {
	return userToken(t, jwtSecret, sub, f.iss, time.Now().Add(time.Hour))
}

// dial opens device as the holder of tok from client address ip and
// returns the HTTP status (101 when upgraded; the socket is closed).
func (f *floodEnv) dial(tok, ip, device string) (int, error) {
	ws, code, err := f.open(tok, ip, device)
	if ws != nil {
		_ = ws.Close()
	}
	return code, err
}

// open is dial keeping the socket open (nil when refused).
func (f *floodEnv) open(tok, ip, device string) (*websocket.Conn, int, error) {
	d := websocket.Dialer{HandshakeTimeout: 15 * time.Second, Subprotocols: []string{"nbiot-live", "access_token." + tok}}
	ws, resp, err := d.Dial("ws://"+f.relay.HTTPAddr().String()+"/device-logs?deviceId="+device, http.Header{"Fly-Client-Ip": {ip}})
	switch {
	case ws != nil:
		return ws, resp.StatusCode, nil
	case resp != nil:
		return nil, resp.StatusCode, nil
	}
	return nil, 0, err
}

// flood runs workers asking for random device IDs as bob from one address
// until stop is called, which returns how many requests were answered and
// how many of them with 429.
func (f *floodEnv) flood(t testing.TB, workers int) (stop func() (sent, limited int64)) {
	tok := f.token(t, bob)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent, limited, seq atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				code, err := f.dial(tok, "198.51.100.66", fmt.Sprintf("RND-%d", seq.Add(1)))
				if err != nil {
					continue
				}
				sent.Add(1)
				if code == http.StatusTooManyRequests {
					limited.Add(1)
					// Pace like a client told to back off; without it the
					// workers only measure how fast 429s can be written.
					select {
					case <-time.After(10 * time.Millisecond):
					case <-ctx.Done():
					}
				}
			}
		}()
	}
	return func() (int64, int64) {
		cancel()
		wg.Wait()
		return sent.Load(), limited.Load()
	}
}
