package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// TestAutoRegisterOff: with AUTO_REGISTER=false an uplink naming an ID that
// has no devices row gets 4.03 and creates no row; once the device is
// provisioned (a devices row, no key) it is accepted within the refresh
// interval and stored. Both storage modes, real Postgres.
func TestAutoRegisterOff(t *testing.T) {
	for _, mode := range []string{app.StoragePostgres, app.StorageREST} {
		t.Run(mode, func(t *testing.T) {
			e := startSecureApp(t, mode, "COAP_ADDR", "127.0.0.1:0", "AUTO_REGISTER", "false")
			const dev = "unprovisioned-1"
			cc, err := udp.Dial(e.app.CoAPAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			if code := tryPost(cc, &nbiotv1.Uplink{DeviceId: dev, UplinkCount: 1}, 5*time.Second); code != codes.Forbidden {
				t.Fatalf("unregistered device: %v, want 4.03", code)
			}
			if got := counter(t, e.app.Metrics, "nbiot_uplinks_rejected_total", map[string]string{"reason": "unregistered"}); got != 1 {
				t.Errorf("unregistered rejections %v, want 1", got)
			}
			ctx := context.Background()
			if _, err := e.pool.Exec(ctx, `insert into public.devices (devid, owner_id) values ($1, $2)`, dev, e.owner); err != nil {
				t.Fatal(err)
			}
			testwait.ForState(t, "the new device registered", func() (bool, string) {
				has, _ := e.app.Registered().Has(dev)
				return has, ""
			}, testwait.Within(15*time.Second))
			if code := tryPost(cc, &nbiotv1.Uplink{DeviceId: dev, UplinkCount: 2}, 5*time.Second); code != codes.Changed {
				t.Fatalf("registered device: %v, want 2.04", code)
			}
			testwait.ForState(t, "its uplink stored", func() (bool, string) {
				var n int
				if err := e.pool.QueryRow(ctx, `select count(*) from activity where devid = $1`, dev).Scan(&n); err != nil {
					return false, err.Error()
				}
				return n == 1, ""
			}, testwait.Within(15*time.Second))
			var devices int
			if err := e.pool.QueryRow(ctx, `select count(*) from devices`).Scan(&devices); err != nil {
				t.Fatal(err)
			}
			if devices != 1 {
				t.Errorf("%d devices rows, want 1 (the provisioned one)", devices)
			}
		})
	}
}

func TestAutoRegisterConfig(t *testing.T) {
	for _, tc := range []struct{ env map[string]string }{
		{map[string]string{"AUTO_REGISTER": "no"}},
		{map[string]string{"AUTO_REGISTER": "false"}}, // without storage
	} {
		tc.env["WS_TOKEN"] = testToken
		_, err := app.FromEnv(func(k string) string { return tc.env[k] })
		if err == nil || !strings.HasPrefix(err.Error(), "AUTO_REGISTER") {
			t.Errorf("%v: err = %v, want one naming AUTO_REGISTER", tc.env, err)
		}
	}
}
