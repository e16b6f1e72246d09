package app_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/fakepostgrest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// The keys fakepostgrest accepts in the REST variant: the service key
// coap-server uses, and the publishable key plus a user JWT the frontend
// uses to queue a downlink.
var (
	coapsJWTSecret   = []byte("coaps-app-test-jwt-secret-0123456789")
	coapsServiceKey  = "sb_secret_coapsapptest0123"
	coapsPublishable = "sb_publishable_coapsapptest0123"
)

// secureEnv is one whole coap-server with CoAPS only (COAP_ADDR=off) over a
// fresh migrated database, reached directly or through the PostgREST
// stand-in.
type secureEnv struct {
	app   *app.App
	pool  *pgxpool.Pool // superuser, for provisioning and checks
	owner string        // auth.users id owning the device
	rest  string        // fakepostgrest URL in REST mode, else ""
	db    string        // the database's superuser URL
}

// startSecureApp configures the app from the environment the way main
// does, with plain CoAP off: DTLS is mandatory.
func startSecureApp(t *testing.T, mode string, extra ...string) *secureEnv {
	t.Helper()
	db := pgtest.NewDB(t)
	env := map[string]string{
		"COAP_ADDR":  "off",
		"COAPS_ADDR": "127.0.0.1:0",
		"HTTP_ADDR":  "127.0.0.1:0",
		"WS_TOKEN":   testToken,
		// The minimum: REST mode polls for downlinks once a second.
		"DOWNLINK_POLL_INTERVAL_SECONDS": "1",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	e := &secureEnv{db: db}
	switch mode {
	case app.StoragePostgres:
		env["DATABASE_URL"] = db
	case app.StorageREST:
		srv := fakepostgrest.Start(t, db, fakepostgrest.Options{
			JWTSecret: coapsJWTSecret, SecretKey: coapsServiceKey, PublishableKey: coapsPublishable,
			MaxRows: 1000}) // Supabase's default "Max rows"
		env["SUPABASE_URL"], env["SUPABASE_SERVICE_KEY"] = srv.URL, coapsServiceKey
		e.rest = srv.URL
	default:
		t.Fatalf("mode %q", mode)
	}
	cfg, err := app.FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	cfg.Stream.DataDir = t.TempDir()
	if cfg.Storage() != mode {
		t.Fatalf("storage mode %q, want %q", cfg.Storage(), mode)
	}
	ctx := context.Background()
	e.pool, err = pgxpool.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.pool.Close)
	if err := e.pool.QueryRow(ctx, `insert into auth.users (email) values ('coaps-owner@example.com') returning id::text`).Scan(&e.owner); err != nil {
		t.Fatal(err)
	}
	e.app = app.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := e.app.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.app.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return e
}

// provision creates the device, owned by e.owner, and a random 16-byte PSK,
// as scripts/provision does.
func (e *secureEnv) provision(t *testing.T, device string) []byte {
	t.Helper()
	psk := make([]byte, 16)
	if _, err := rand.Read(psk); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `insert into public.devices (devid, owner_id) values ($1, $2)`, device, e.owner); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `insert into public.device_credentials (devid, psk) values ($1, $2)`, device, psk)
		return err
	})
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	return psk
}

// queueDownlink queues config for device as its owner, under RLS, the way
// the frontend does: in REST mode a POST with the publishable key and the
// user's JWT, else an insert as role authenticated with the user's claims.
func (e *secureEnv) queueDownlink(t *testing.T, device, config string) int64 {
	t.Helper()
	ctx := context.Background()
	if e.rest == "" {
		var id int64
		err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `select set_config('request.jwt.claims', $1, true)`,
				fmt.Sprintf(`{"sub":%q,"role":"authenticated"}`, e.owner)); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `set local role authenticated`); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `insert into public.device_downlinks (devid, config) values ($1, $2::jsonb) returning id`, device, config).Scan(&id)
		})
		if err != nil {
			t.Fatalf("queue downlink as owner: %v", err)
		}
		return id
	}
	jwt := fakepostgrest.SignJWT(t, coapsJWTSecret, map[string]any{
		"role": "authenticated", "sub": e.owner, "exp": time.Now().Add(time.Hour).Unix()})
	body := fmt.Sprintf(`{"devid":%q,"config":%s}`, device, config)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.rest+"/rest/v1/device_downlinks", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("apikey", coapsPublishable)
	req.Header.Set("Authorization", "Bearer "+jwt)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Prefer", "return=representation")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	var rows []struct {
		ID int64 `json:"id"`
	}
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(out, &rows) != nil || len(rows) != 1 {
		t.Fatalf("queue downlink over REST as owner: %d %s", resp.StatusCode, out)
	}
	return rows[0].ID
}

// stamped reports whether column (sent_at, applied_at) is set on row id.
func (e *secureEnv) stamped(t *testing.T, id int64, column string) bool {
	t.Helper()
	var set bool
	err := e.pool.QueryRow(context.Background(),
		`select `+column+` is not null from public.device_downlinks where id = $1`, id).Scan(&set)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// dialDevice opens a CoAPS session as device with go-coap's dtls.Dial and
// pion's PSK options (CCM-8, the CoAP suite; a Connection ID the server
// assigns), then completes the handshake explicitly: Dial returns no error
// for a wrong key (docs/pitfalls.md#pion-dtls), so a test that trusted it would only fail later
// and less clearly.
func dialDevice(t *testing.T, e *secureEnv, device string, psk []byte) *udpClient.Conn {
	t.Helper()
	cc, err := coapdtls.Dial(e.app.CoAPSAddr().String(), coapdtls.NewDTLSClientOptions(
		piondtls.WithPSK(func([]byte) ([]byte, error) { return psk, nil }),
		piondtls.WithPSKIdentityHint([]byte(device)),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
		piondtls.WithConnectionIDGenerator(piondtls.OnlySendCIDGenerator()),
	))
	if err != nil {
		t.Fatalf("dtls.Dial: %v", err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	dc, ok := cc.NetConn().(*piondtls.Conn)
	if !ok {
		t.Fatalf("NetConn is %T, want *dtls.Conn", cc.NetConn())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dc.HandshakeContext(ctx); err != nil {
		t.Fatalf("DTLS handshake as %s: %v", device, err)
	}
	return cc
}

// postSecure sends u and returns the answer's code and payload.
func postSecure(t *testing.T, cc *udpClient.Conn, u *nbiotv1.Uplink) (codes.Code, []byte) {
	t.Helper()
	b, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST /uplink over DTLS: %v", err)
	}
	body, err := resp.ReadBody()
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return resp.Code(), body
}

// TestCoAPSWholeApp runs coap-server with DTLS mandatory in both storage
// modes: a provisioned device posts over CoAPS without naming itself, is
// streamed and stored under its PSK identity, receives the configuration
// its owner queued in the 2.04 of its next uplink, and applying it is
// recorded.
func TestCoAPSWholeApp(t *testing.T) {
	for _, mode := range []string{app.StoragePostgres, app.StorageREST} {
		t.Run(mode, func(t *testing.T) { testCoAPSWholeApp(t, mode) })
	}
}

func testCoAPSWholeApp(t *testing.T, mode string) {
	const dev = "coaps-dev-1"
	e := startSecureApp(t, mode)
	if addr := e.app.CoAPAddr(); addr != nil {
		t.Fatalf("COAP_ADDR=off still serves plain CoAP on %v", addr)
	}
	if e.app.CoAPSAddr() == nil {
		t.Fatal("no CoAPS listener")
	}
	psk := e.provision(t, dev)
	ws := dialWS(t, e.app, "?deviceId="+dev)
	cc := dialDevice(t, e, dev, psk)

	// 1. An uplink with an empty device_id takes the PSK identity.
	temp := float32(19.5)
	code, body := postSecure(t, cc, &nbiotv1.Uplink{UplinkCount: 1, Temperature: &temp})
	if code != codes.Changed || len(body) != 0 {
		t.Fatalf("first uplink: %v with %d bytes, want 2.04 and no payload", code, len(body))
	}
	if f := readFrame(t, ws); f["deviceId"] != dev || f["type"] != "uplink" {
		t.Fatalf("frame %v, want an uplink of %s", f, dev)
	}
	testwait.ForState(t, "uplink stored under the identity", func() (bool, string) {
		n := countRows(t, e.db, `select count(*) from activity a join sensor_data s using (uplink_id)
			where a.devid = '`+dev+`' and a.uplink_count = 1 and s.data_type = 'temperature'`)
		return n == 1, fmt.Sprint(n, " rows")
	}, testwait.Within(15*time.Second))

	// 2. The owner queues a configuration; it is held once the service has
	// seen it (notification or poll).
	id := e.queueDownlink(t, dev, `{"heartbeat_interval": 900, "wifi_scan_interval": 0}`)
	testwait.ForState(t, "downlink held", func() (bool, string) {
		return e.app.Downlinks().Holds(dev, id), fmt.Sprint(e.app.Downlinks().Len(), " devices held")
	}, testwait.Within(15*time.Second))

	// 3. The next uplink's 2.04 carries it, config_version = row id.
	code, body = postSecure(t, cc, &nbiotv1.Uplink{UplinkCount: 2})
	if code != codes.Changed {
		t.Fatalf("second uplink: %v", code)
	}
	var dl nbiotv1.Downlink
	if err := proto.Unmarshal(body, &dl); err != nil {
		t.Fatalf("answer %x is not a Downlink: %v", body, err)
	}
	c := dl.GetConfig()
	if c.GetConfigVersion() != uint32(id) || c.HeartbeatInterval == nil || c.GetHeartbeatInterval() != 900 ||
		c.WifiScanInterval == nil || c.GetWifiScanInterval() != 0 || c.GnssInterval != nil {
		t.Fatalf("downlink %v, want heartbeat 900, wifi scan 0, config_version %d", c, id)
	}
	if f := readFrame(t, ws); f["type"] != "downlink" || f["data"].(map[string]any)["state"] != "queued" {
		t.Fatalf("frame %v, want the downlink's queued entry", f)
	}
	if f := readFrame(t, ws); f["type"] != "uplink" || f["data"].(map[string]any)["uplink_count"] != 2.0 {
		t.Fatalf("frame %v, want uplink #2", f)
	}
	if f := readFrame(t, ws); f["type"] != "downlink" || f["deviceId"] != dev || f["message"] != fmt.Sprintf("Sent configuration v%d", id) {
		t.Fatalf("frame %v, want the downlink entry", f)
	}
	testwait.ForState(t, "sent_at stamped", func() (bool, string) { return e.stamped(t, id, "sent_at"), "" }, testwait.Within(15*time.Second))
	if e.stamped(t, id, "applied_at") {
		t.Fatal("applied_at stamped before the device reported the version")
	}

	// 4. An uplink reporting that config_version: applied, nothing to send.
	v := uint32(id)
	hb := uint32(900)
	code, body = postSecure(t, cc, &nbiotv1.Uplink{UplinkCount: 3,
		Config: &nbiotv1.DeviceConfig{ConfigVersion: &v, HeartbeatInterval: &hb}})
	if code != codes.Changed || len(body) != 0 {
		t.Fatalf("applying uplink: %v with %d bytes, want 2.04 and no payload", code, len(body))
	}
	f := readFrame(t, ws)
	if d, _ := f["data"].(map[string]any); f["type"] != "uplink" || d["config_applied"] != true {
		t.Fatalf("frame %v, want uplink #3 with config_applied true", f)
	}
	testwait.ForState(t, "applied_at stamped", func() (bool, string) { return e.stamped(t, id, "applied_at"), "" }, testwait.Within(15*time.Second))
	testwait.ForState(t, "device_config upserted with the version", func() (bool, string) {
		n := countRows(t, e.db, fmt.Sprintf(
			`select count(*) from device_config where devid = '%s' and config_version = %d`, dev, id))
		return n == 1, fmt.Sprint(n)
	}, testwait.Within(15*time.Second))
	testwait.ForState(t, "every uplink stored once", func() (bool, string) {
		n := countRows(t, e.db, `select count(*) from activity where devid = '`+dev+`'`)
		return n == 3, fmt.Sprint(n, " rows")
	}, testwait.Within(15*time.Second))
}
