package app_test

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/natstest"
	"github.com/nbiot-live/nbiot-live/internal/proctest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// A NATS_URL that does not answer stops the start with one line naming
// the variable, and never the URL's credentials.
func TestNATSUnreachableAtStart(t *testing.T) {
	cfg, err := app.FromEnv(func(k string) string {
		return map[string]string{"COAP_ADDR": "127.0.0.1:0", "HTTP_ADDR": "127.0.0.1:0", "WS_TOKEN": testToken,
			"NATS_URL": "nats://user:s3cret-pass@127.0.0.1:" + strconv.Itoa(proctest.FreePort(t))}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Stream.DataDir = t.TempDir()
	cfg.Stream.ConnectTimeout = 2 * time.Second
	a := app.New(cfg, discardLogger())
	err = a.Start(context.Background())
	if err == nil {
		t.Fatal("started without a NATS")
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "NATS_URL") || strings.Contains(msg, "s3cret") || strings.Contains(msg, "\n") {
		t.Fatalf("error %q: want one line starting with NATS_URL, without the password", msg)
	}
}

// A NATS that goes away while running: uplinks get 5.03 (never a 2.04
// that is not durable) and /readyz fails, until it is back.
func TestNATSOutageRefusesUntilBack(t *testing.T) {
	ns := natstest.Start(t)
	a := startApp(t, func(c *app.Config) { c.Stream.URL = ns.URL })
	cc := dialCoAP(t, a)
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "NOUT", UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("before the outage: %v", code)
	}
	ready := func() int { return readyz(a) }
	ns.Stop()
	testwait.ForState(t, "/readyz failing without NATS", func() (bool, string) {
		c := ready()
		return c == http.StatusServiceUnavailable, strconv.Itoa(c)
	}, testwait.Within(10*time.Second))
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "NOUT", UplinkCount: 2}); code != codes.ServiceUnavailable {
		t.Fatalf("during the outage: %v, want 5.03", code)
	}
	ns.Restart(t)
	testwait.ForState(t, "/readyz after NATS is back", func() (bool, string) {
		c := ready()
		return c == http.StatusOK, strconv.Itoa(c)
	}, testwait.Within(30*time.Second))
	ws := dialWS(t, a, "?deviceId=NOUT&tail=10")
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "NOUT", UplinkCount: 3}); code != codes.Changed {
		t.Fatalf("after the outage: %v", code)
	}
	for _, want := range []float64{1, 3} {
		f := readFrame(t, ws)
		if f["data"].(map[string]any)["uplink_count"] != want {
			t.Fatalf("frame %v, want uplink #%v (the refused #2 was never accepted)", f, want)
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// readyz is the status of a's GET /readyz (0 when it does not answer).
func readyz(a *app.App) int {
	resp, err := http.Get("http://" + a.HTTPAddr().String() + "/readyz")
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
