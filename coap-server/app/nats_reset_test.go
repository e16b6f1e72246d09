package app_test

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/natstest"
	"github.com/nbiot-live/nbiot-live/internal/pgtest"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// NATS_URL comes back without its streams. First without JetStream:
// /readyz fails and keeps failing (it said 200: the connections were up),
// uplinks get 5.03. Then with JetStream on an empty store (a node
// restarted without its volume): coap-server creates the streams and the
// storage consumer again, /readyz passes, and uplinks get 2.04 and reach
// the database again. Before, every uplink got 5.03 for good.
func TestNATSBackWithoutItsStreams(t *testing.T) {
	db := pgtest.NewDB(t)
	ns := natstest.Start(t)
	a := startApp(t, func(c *app.Config) { c.Stream.URL, c.DatabaseURL = ns.URL, db })
	cc := dialCoAP(t, a)
	ready := func() int { return readyz(a) }
	stored := func(want ...uint32) {
		t.Helper()
		testwait.ForState(t, fmt.Sprint("uplinks ", want, " stored"), func() (bool, string) {
			got := storedCounts(t, db, "NRST")
			for _, n := range want {
				if !got[n] {
					return false, fmt.Sprint(got)
				}
			}
			return true, ""
		}, testwait.Within(20*time.Second))
	}
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "NRST", UplinkCount: 1}); code != codes.Changed {
		t.Fatalf("before: %v", code)
	}
	stored(1)
	if c := ready(); c != http.StatusOK {
		t.Fatalf("/readyz before: %d", c)
	}

	ns.RestartOn(t, "") // the same address, no JetStream
	testwait.For(t, "reconnected", a.Engine().Connected, testwait.Within(15*time.Second))
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c := ready(); c != http.StatusServiceUnavailable {
			t.Fatalf("/readyz %d, connected to a NATS without JetStream", c)
		}
	}
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "NRST", UplinkCount: 2}); code != codes.ServiceUnavailable {
		t.Fatalf("without JetStream: %v, want 5.03", code)
	}

	ns.RestartOn(t, t.TempDir()) // JetStream, an empty store
	testwait.ForState(t, "/readyz once the streams are created again", func() (bool, string) {
		c := ready()
		return c == http.StatusOK, strconv.Itoa(c)
	}, testwait.Within(30*time.Second))
	if code := post(t, cc, &nbiotv1.Uplink{DeviceId: "NRST", UplinkCount: 3}); code != codes.Changed {
		t.Fatalf("after: %v, want 2.04", code)
	}
	stored(1, 3)
}
