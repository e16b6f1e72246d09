package web_test

// The whole stack the page talks to, for the browser tests: a real
// Postgres database with the migrations (internal/pgtest), coap-server and
// the relay in-process on loopback, user tokens signed like a legacy
// (HS256) Supabase project's, and real CoAP uplinks. Nothing is faked.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"
	"google.golang.org/protobuf/proto"

	coapapp "github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
	relayapp "github.com/nbiot-live/nbiot-live/relay/app"
)

const (
	wsToken   = "browser-test-ws-token-0123456789"
	jwtSecret = "browser-test-jwt-secret-0123456789abcdef"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// seedDevice creates a user owning deviceID in a fresh database and returns
// the database URL and the user's ID.
func seedDevice(t *testing.T, deviceID string) (dbURL string, owner uuid.UUID) {
	t.Helper()
	dbURL = pgtest.NewDB(t)
	owner = uuid.New()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `insert into auth.users (id, email) values ($1, 'owner@example.com')`, owner); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `insert into public.devices (devid, owner_id, name) values ($1, $2, 'browser test')`, deviceID, owner); err != nil {
		t.Fatal(err)
	}
	return dbURL, owner
}

// seedStranger adds a user who owns no device.
func seedStranger(t *testing.T, dbURL string) uuid.UUID {
	t.Helper()
	id := uuid.New()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `insert into auth.users (id, email) values ($1, 'stranger@example.com')`, id); err != nil {
		t.Fatal(err)
	}
	return id
}

// userToken signs a Supabase-shaped access token for user, valid for ttl
// (negative: already expired).
func userToken(t *testing.T, user uuid.UUID, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":  user.String(),
		"role": "authenticated",
		"aud":  "authenticated",
		"iat":  now.Add(-time.Minute).Unix(),
		"exp":  now.Add(ttl).Unix(),
	}).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// startCoAP runs coap-server on the given addresses (port 0 = any) until
// stopped or the test ends; extra adds variables (DATABASE_URL, say).
// stop is idempotent.
func startCoAP(t *testing.T, coapAddr, httpAddr string, extra ...string) (a *coapapp.App, stop func()) {
	t.Helper()
	// One DATA_DIR per test, so a restarted coap-server finds its stream.
	env := map[string]string{"COAP_ADDR": coapAddr, "HTTP_ADDR": httpAddr, "WS_TOKEN": wsToken, "DATA_DIR": dataDirOf(t)}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	cfg, err := coapapp.FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	a = coapapp.New(cfg, discard())
	if err := a.Start(context.Background()); err != nil {
		t.Fatalf("coap-server start on %s/%s: %v", coapAddr, httpAddr, err)
	}
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("coap-server shutdown: %v", err)
		}
	}
	t.Cleanup(stop)
	return a, stop
}

// startRelay runs the relay with real token verification (HS256 secret)
// and the Postgres access check, against coap-server's /ws.
// extra adds variables (ALLOWED_ORIGINS, say).
func startRelay(t *testing.T, httpAddr string, upstream net.Addr, dbURL string, extra ...string) (a *relayapp.App, stop func()) {
	t.Helper()
	env := map[string]string{
		"HTTP_ADDR":           httpAddr,
		"UPSTREAM_URL":        "ws://" + upstream.String() + "/ws",
		"UPSTREAM_TOKEN":      wsToken,
		"SUPABASE_JWT_SECRET": jwtSecret,
		"DATABASE_URL":        dbURL,
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	cfg, err := relayapp.FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	a = relayapp.New(cfg, discard())
	if err := a.Start(context.Background()); err != nil {
		t.Fatalf("relay start on %s: %v", httpAddr, err)
	}
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("relay shutdown: %v", err)
		}
	}
	t.Cleanup(stop)
	return a, stop
}

// sendUplink posts u to coap-server as a device would (CON, real UDP) and
// wants 2.04.
func sendUplink(t *testing.T, a *coapapp.App, u *nbiotv1.Uplink) {
	t.Helper()
	if code := postUplink(t, a, u); code != codes.Changed {
		t.Fatalf("POST /uplink: %v, want 2.04", code)
	}
}

// postUplink posts u and returns the response code.
func postUplink(t *testing.T, a *coapapp.App, u *nbiotv1.Uplink) codes.Code {
	t.Helper()
	b, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := udp.Dial(a.CoAPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST /uplink: %v", err)
	}
	return resp.Code()
}

func ptr[T any](v T) *T { return &v }

// richUplink carries every field the page lays out.
func richUplink(device string, count uint32) *nbiotv1.Uplink {
	return &nbiotv1.Uplink{
		DeviceId:    device,
		UplinkCount: count,
		Temperature: ptr(float32(23.5)),
		Activity:    &nbiotv1.Activity{Sleep: 3600, Modem: 45, Gnss: 120, Wifi: 30, Other: 60},
		WifiAps: []*nbiotv1.WifiAp{
			{Bssid: []byte{1, 2, 3, 4, 5, 6}, Rssi: -60, Channel: 1},
			{Bssid: []byte{1, 2, 3, 4, 5, 7}, Rssi: -70, Channel: 6},
			{Bssid: []byte{1, 2, 3, 4, 5, 8}, Rssi: -80, Channel: 11},
		},
		Reboot:    &nbiotv1.Reboot{Reason: nbiotv1.Reboot_REASON_WATCHDOG, Count: 3},
		Gnss:      &nbiotv1.Gnss{Lat: 52.52, Lon: 13.405, AccuracyM: 8},
		BatteryMv: ptr(uint32(3600)),
		Config: &nbiotv1.DeviceConfig{
			HeartbeatInterval: ptr(uint32(3600)), FwVersion: "1.2.3", HwVersion: "revB",
			GnssInterval: ptr(uint32(0)), WifiScanInterval: ptr(uint32(600)), ConfigVersion: ptr(uint32(7)),
		},
	}
}

// plainUplink is a heartbeat with activity and temperature only.
func plainUplink(device string, count uint32, temp float32) *nbiotv1.Uplink {
	return &nbiotv1.Uplink{
		DeviceId: device, UplinkCount: count, Temperature: ptr(temp),
		Activity: &nbiotv1.Activity{Sleep: 1700, Modem: 30, Other: 70},
	}
}

func hostPort(t *testing.T, a net.Addr) string {
	t.Helper()
	_, port, err := net.SplitHostPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%s", port)
}

// dataDirs holds each test's coap-server DATA_DIR across restarts.
var dataDirs sync.Map // *testing.T → string

func dataDirOf(t *testing.T) string {
	if v, ok := dataDirs.Load(t); ok {
		return v.(string)
	}
	d := t.TempDir()
	dataDirs.Store(t, d)
	return d
}
