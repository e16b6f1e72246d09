package downlink_test

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// device_downlinks' ids come from one sequence for every tenant, and an
// insert that fails (a config over its size bound) uses its ids too: one
// user could push the sequence past 2^32 with cheap failing inserts, and
// every later downlink of every tenant was refused ("does not fit
// config_version"). Past 2^32 the config_version sent counts from 1 again
// (livelog.ConfigVersion), and the device's report of it applies it. (Found
// in an audit.)
func TestDownlinkPastUint32IdsIsSentAndApplied(t *testing.T) {
	e := start(t)
	e.device(t, "dev-big")
	if _, err := e.pool.Exec(context.Background(), `select setval(pg_get_serial_sequence('public.device_downlinks', 'id'), 4294967300)`); err != nil {
		t.Fatal(err)
	}
	id := e.queue(t, "dev-big", `{"heartbeat_interval": 900}`)
	if id <= 1<<32 {
		t.Fatalf("id %d, want one past 2^32", id)
	}
	testwait.For(t, "the notification", func() bool { return e.svc.Len() == 1 })
	post := func(u *nbiotv1.Uplink) []byte { t.Helper(); return postUplink(t, e.addr, u) }
	body := post(&nbiotv1.Uplink{DeviceId: "dev-big", UplinkCount: 1})
	var dl nbiotv1.Downlink
	if err := proto.Unmarshal(body, &dl); err != nil || dl.GetConfig() == nil {
		t.Fatalf("no configuration in the answer (%d bytes, %v): a downlink past 2^32 is not sent", len(body), err)
	}
	want := livelog.ConfigVersion(id)
	if got := dl.GetConfig().GetConfigVersion(); got != want || got == 0 || int64(got) == id {
		t.Fatalf("config_version %d for id %d, want %d", got, id, want)
	}
	if body := post(&nbiotv1.Uplink{DeviceId: "dev-big", UplinkCount: 2, Config: &nbiotv1.DeviceConfig{ConfigVersion: &want}}); len(body) != 0 {
		t.Errorf("the applying uplink's answer carries %d bytes, want none", len(body))
	}
	testwait.For(t, "applied_at", func() bool { _, a, _ := e.stamps(t, id); return a })
}
