package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	coapapp "github.com/nbiot-live/nbiot-live/coap-server/app"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
	"github.com/nbiot-live/nbiot-live/relay/app"
)

const (
	wsToken   = "upstream-token-0123456789abcdef"
	jwtSecret = "test-jwt-secret-0123456789abcdef-0123456789"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// startCoAP runs coap-server on loopback (port 0 unless addresses are
// given) until stopped or the test ends.
func startCoAP(t testing.TB, coapAddr, httpAddr string) *coapapp.App {
	t.Helper()
	if coapAddr == "" {
		coapAddr = "127.0.0.1:0"
	}
	if httpAddr == "" {
		httpAddr = "127.0.0.1:0"
	}
	dataDir := t.TempDir() // the JetStream store
	cfg, err := coapapp.FromEnv(func(k string) string {
		return map[string]string{"COAP_ADDR": coapAddr, "HTTP_ADDR": httpAddr, "METRICS_ADDR": "127.0.0.1:0", "WS_TOKEN": wsToken, "DATA_DIR": dataDir}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	a := coapapp.New(cfg, discard())
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCoAP(t, a) })
	return a
}

func stopCoAP(t testing.TB, a *coapapp.App) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Errorf("coap-server shutdown: %v", err)
	}
}

// fastBackOff reconnects within milliseconds so that tests wait on
// observable states, never on the default 250 ms…30 s schedule.
func fastBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 5 * time.Millisecond
	b.MaxInterval = 50 * time.Millisecond
	b.MaxElapsedTime = 0
	return b
}

// startRelay runs the relay against coap-server c with env (on top of the
// upstream and address settings).
func startRelay(t testing.TB, c *coapapp.App, env map[string]string, mutate func(*app.Config)) *app.App {
	t.Helper()
	return startRelayLogged(t, c, env, mutate, discard())
}

// startRelayLogged is startRelay logging to logger.
func startRelayLogged(t testing.TB, c *coapapp.App, env map[string]string, mutate func(*app.Config), logger *slog.Logger) *app.App {
	t.Helper()
	base := map[string]string{
		"HTTP_ADDR":      "127.0.0.1:0",
		"METRICS_ADDR":   "127.0.0.1:0",
		"UPSTREAM_URL":   "ws://" + c.HTTPAddr().String() + "/ws",
		"UPSTREAM_TOKEN": wsToken,
	}
	for k, v := range env {
		base[k] = v
	}
	cfg, err := app.FromEnv(func(k string) string { return base[k] })
	if err != nil {
		t.Fatal(err)
	}
	cfg.UpstreamBackOff = fastBackOff
	if mutate != nil {
		mutate(&cfg)
	}
	r := app.New(cfg, logger)
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("relay shutdown: %v", err)
		}
	})
	return r
}

// seed creates users and devices in the test database as superuser:
// owners maps device ID to owner user ID.
func seed(t testing.TB, dbURL string, users []string, owners map[string]string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, u := range users {
		if _, err := conn.Exec(ctx, "insert into auth.users (id, email) values ($1, $2)", u, u+"@example.com"); err != nil {
			t.Fatal(err)
		}
	}
	for d, o := range owners {
		if _, err := conn.Exec(ctx, "insert into public.devices (devid, owner_id) values ($1, $2)", d, o); err != nil {
			t.Fatal(err)
		}
	}
}

// userToken is a Supabase-shaped user access token signed with secret.
func userToken(t testing.TB, secret, sub, iss string, exp time.Time) string {
	t.Helper()
	claims := jwt.MapClaims{
		"sub": sub, "role": "authenticated", "aud": "authenticated",
		"exp": exp.Unix(), "iat": time.Now().Unix(), "email": sub + "@example.com",
	}
	if iss != "" {
		claims["iss"] = iss
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dialOpts says how a browser presents its token.
type dialOpts struct {
	token     string
	form      string // "header", "query", "subprotocol", "bare-subprotocol"
	origin    string
	protocols []string
	header    http.Header // extra request headers
}

// dialBrowser opens /device-logs like a browser; it returns the HTTP
// status of a refused handshake (and a nil conn).
func dialBrowser(t testing.TB, r *app.App, device string, o dialOpts) (*websocket.Conn, int) {
	t.Helper()
	u := "ws://" + r.HTTPAddr().String() + "/device-logs?deviceId=" + device
	h := http.Header{}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Subprotocols: o.protocols}
	if o.origin != "" {
		h.Set("Origin", o.origin)
	}
	for k, v := range o.header {
		h[k] = v
	}
	if o.token != "" {
		switch o.form {
		case "", "header":
			h.Set("Authorization", "Bearer "+o.token)
		case "query":
			u += "&access_token=" + o.token
		case "subprotocol":
			d.Subprotocols = append([]string{"nbiot-live", "access_token." + o.token}, o.protocols...)
		case "bare-subprotocol":
			d.Subprotocols = []string{"nbiot-live", o.token}
		}
	}
	ws, resp, err := d.Dial(u, h)
	if err != nil {
		if resp == nil {
			t.Fatalf("dial relay: %v", err)
		}
		return nil, resp.StatusCode
	}
	t.Cleanup(func() { _ = ws.Close() })
	return ws, resp.StatusCode
}

func mustDial(t testing.TB, r *app.App, device string, o dialOpts) *websocket.Conn {
	t.Helper()
	ws, code := dialBrowser(t, r, device, o)
	if ws == nil {
		t.Fatalf("dial %s: HTTP %d", device, code)
	}
	return ws
}

func dialCoAP(t testing.TB, c *coapapp.App) *udpClient.Conn {
	t.Helper()
	cc, err := udp.Dial(c.CoAPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func sendUplink(t testing.TB, cc *udpClient.Conn, device string, count uint32) {
	t.Helper()
	temp := float32(21.5)
	b, err := proto.Marshal(&nbiotv1.Uplink{DeviceId: device, UplinkCount: count, Temperature: &temp})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST /uplink: %v", err)
	}
	if resp.Code() != codes.Changed {
		t.Fatalf("POST /uplink: %v", resp.Code())
	}
}

type frame struct {
	DeviceID string         `json:"deviceId"`
	Type     string         `json:"type"`
	Message  string         `json:"message"`
	Data     map[string]any `json:"data"`
	raw      []byte
}

func readFrame(t testing.TB, ws *websocket.Conn) frame {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("frame type %d, want text", typ)
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %q: %v", b, err)
	}
	f.raw = b
	return f
}

// gauge reads a gauge's value from a registry.
func gauge(t testing.TB, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
			return sum
		}
	}
	return 0
}

// counter reads a counter (summed over labels matching label=value, or all when label is "").
func counter(t testing.TB, g prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			if label != "" {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == label && lp.GetValue() != value {
						continue metrics
					}
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func scrape(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	return string(b)
}
