package dtls_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5/pgxpool"
	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nbiot-live/nbiot-live/coap-server/dtls"
	"github.com/nbiot-live/nbiot-live/coap-server/httpapi"
	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/coap-server/ingest"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/stream/streamtest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
)

const wsToken = "dtls-test-token-0123456789"

var discard = slog.New(slog.DiscardHandler)

// heldUplinks counts the uplinks accepted into the real UPLINKS stream
// (nothing consumes it here): "no row for a refused handshake" depends on
// an accepted uplink being published once, and on nothing else.
type heldUplinks struct{ e *stream.Engine }

func (s heldUplinks) Len() int {
	n, err := s.e.UplinksHeld(context.Background())
	if err != nil {
		return -1
	}
	return int(n)
}

type fixture struct {
	srv     *dtls.Server
	metrics *dtls.Metrics
	store   heldUplinks
	pool    *pgxpool.Pool
	wsURL   string
	handler *ingest.Handler
}

// newFixture runs a CoAPS server on loopback with keys from a real migrated
// database, the real hub and a real /ws endpoint.
func newFixture(t testing.TB, mutate func(*dtls.Config)) *fixture {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	reg := prometheus.NewRegistry()
	h := hub.New(hub.NewMetrics(reg))
	engine := streamtest.New(t, stream.Config{Storage: true})
	stop, _, err := engine.Feed(ctx, h.Feed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	f := &fixture{store: heldUplinks{engine.Engine}, pool: pool, metrics: dtls.NewMetrics(reg)}
	f.handler = &ingest.Handler{Stream: engine, Logger: discard, Metrics: ingest.NewMetrics(reg)}
	api := &httpapi.Server{Hub: h, History: engine, Token: wsToken, Ready: func() bool { return true }, Gatherer: reg, Logger: discard}
	hs := httptest.NewServer(api.Handler())
	t.Cleanup(func() { api.CloseSubscribers(); hs.Close() })
	f.wsURL = "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws"

	cfg := dtls.Config{
		Keys:    dtls.NewKeyCache(dtls.PGKeys{Pool: pool}, dtls.KeyCacheConfig{}, f.metrics, discard),
		Metrics: f.metrics,
		Logger:  discard,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	f.srv, err = dtls.Listen("127.0.0.1:0", f.handler, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.srv.Serve() }()
	t.Cleanup(func() {
		f.srv.Stop()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			var stacks strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Errorf("Serve did not return after Stop; goroutines:\n%s", stacks.String())
		}
	})
	return f
}

// provision creates a device and its PSK the way scripts/provision does.
func (f *fixture) provision(t testing.TB, device string, psk []byte) {
	t.Helper()
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `insert into public.devices (devid) values ($1) on conflict do nothing`, device); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `insert into public.device_credentials (devid, psk) values ($1, $2)`, device, psk); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) dialWS(t testing.TB, device string) *websocket.Conn {
	t.Helper()
	ws, resp, err := websocket.DefaultDialer.Dial(f.wsURL+"?deviceId="+device, http.Header{"Authorization": {"Bearer " + wsToken}})
	if err != nil {
		t.Fatalf("dial /ws: %v (%v)", err, resp)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return ws
}

func readFrame(t testing.TB, ws *websocket.Conn, within time.Duration) (map[string]any, error) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(within))
	_, b, err := ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("frame %q: %v", b, err)
	}
	return m, nil
}

func (f *fixture) handshakes(result string) float64 {
	return testutil.ToFloat64(f.metrics.Handshakes.WithLabelValues(result))
}

// dialGo opens a go-coap client over a pion DTLS client on conn (a UDP
// socket the test controls), with a Connection ID, and completes the
// handshake explicitly (docs/pitfalls.md#pion-dtls: a wrong key is otherwise only seen on the
// first request).
func dialGo(t testing.TB, conn net.PacketConn, raddr *net.UDPAddr, device string, psk []byte, cid bool) (*udpClient.Conn, *piondtls.Conn, error) {
	t.Helper()
	return dialGoWithin(t, conn, raddr, device, psk, cid, 10*time.Second)
}

func dialGoWithin(t testing.TB, conn net.PacketConn, raddr *net.UDPAddr, device string, psk []byte, cid bool, within time.Duration) (*udpClient.Conn, *piondtls.Conn, error) {
	t.Helper()
	dc, err := dialPion(conn, raddr, device, psk, cid, within)
	if err != nil {
		return nil, nil, err
	}
	cc := coapdtls.Client(dc)
	t.Cleanup(func() { _ = cc.Close() })
	return cc, dc, nil
}

// dialPion completes a pion DTLS client's handshake on conn, as dialGo
// does, without a CoAP client reading from it.
func dialPion(conn net.PacketConn, raddr *net.UDPAddr, device string, psk []byte, cid bool, within time.Duration) (*piondtls.Conn, error) {
	opts := []piondtls.ClientOption{
		piondtls.WithPSK(func([]byte) ([]byte, error) { return psk, nil }),
		piondtls.WithPSKIdentityHint([]byte(device)),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
	}
	if cid {
		// The device sends the server's CID but asks none for itself
		// (RFC 9146 §3: a zero-length CID), as constrained clients do.
		opts = append(opts, piondtls.WithConnectionIDGenerator(piondtls.OnlySendCIDGenerator()))
	}
	dc, err := piondtls.ClientWithOptions(conn, raddr, opts...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := dc.HandshakeContext(ctx); err != nil {
		_ = dc.Close()
		return nil, err
	}
	return dc, nil
}
