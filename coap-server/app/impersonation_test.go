package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/internal/testwait"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// TestPlainCoAPCannotSpeakForACredentialedDevice: with CoAPS on, a
// plain-CoAP uplink naming a device that has a key gets 4.01: no row, no
// live-log entry, the owner's pending downlink is neither handed out nor
// marked applied. The device itself, over DTLS, still gets it.
func TestPlainCoAPCannotSpeakForACredentialedDevice(t *testing.T) {
	for _, mode := range []string{app.StoragePostgres, app.StorageREST} {
		t.Run(mode, func(t *testing.T) {
			e := startSecureApp(t, mode, "COAP_ADDR", "127.0.0.1:0")
			const dev = "keyed-1"
			psk := e.provision(t, dev)
			ws := dialWS(t, e.app, "?deviceId="+dev+"&deviceId=plain-1")
			id := e.queueDownlink(t, dev, `{"heartbeat_interval": 600}`)
			testwait.ForState(t, "downlink held", func() (bool, string) {
				return e.app.Downlinks().Holds(dev, id), ""
			}, testwait.Within(15*time.Second))
			f := readFrame(t, ws) // the queued entry
			if f["type"] != "downlink" {
				t.Fatalf("frame %v, want the downlink's queued entry", f)
			}
			// The credential list is re-read every few seconds: a new key
			// takes effect within that time.
			testwait.ForState(t, "the new credential known", func() (bool, string) {
				required, _ := e.app.Credentialed().Has(dev)
				return required, ""
			}, testwait.Within(15*time.Second))
			cc, err := udp.Dial(e.app.CoAPAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			impostor := &nbiotv1.Uplink{DeviceId: dev, UplinkCount: 1,
				Config: &nbiotv1.DeviceConfig{ConfigVersion: ptrU32(uint32(id))}}
			if code := tryPost(cc, impostor, 5*time.Second); code != codes.Unauthorized {
				t.Fatalf("plain-CoAP uplink naming a keyed device: %v, want 4.01", code)
			}
			if got := counter(t, e.app.Metrics, "nbiot_uplinks_rejected_total", map[string]string{"reason": "unauthorized"}); got < 1 {
				t.Errorf("unauthorized rejections %v", got)
			}
			// A plain device is still served; its entry is the next frame:
			// the impostor made none.
			if code := tryPost(cc, &nbiotv1.Uplink{DeviceId: "plain-1", UplinkCount: 1}, 5*time.Second); code != codes.Changed {
				t.Fatalf("plain device: %v", code)
			}
			if f := readFrame(t, ws); f["deviceId"] != "plain-1" {
				t.Fatalf("frame %v, want plain-1's uplink (no entry for the impostor)", f)
			}
			ctx := context.Background()
			var rows, sent, applied int
			if err := e.pool.QueryRow(ctx, `select (select count(*) from activity where devid = $1),
				(select count(*) from device_downlinks where devid = $1 and sent_at is not null),
				(select count(*) from device_downlinks where devid = $1 and applied_at is not null)`, dev).Scan(&rows, &sent, &applied); err != nil {
				t.Fatal(err)
			}
			if rows != 0 || sent != 0 || applied != 0 {
				t.Fatalf("after the impostor: %d rows, %d sent, %d applied; want none", rows, sent, applied)
			}
			// The real device over DTLS gets its downlink.
			sc := dialDevice(t, e, dev, psk)
			code, body := postSecure(t, sc, &nbiotv1.Uplink{UplinkCount: 2})
			if code != codes.Changed || len(body) == 0 {
				t.Fatalf("the device over DTLS: %v with %d bytes, want 2.04 with its downlink", code, len(body))
			}
		})
	}
}

func ptrU32(v uint32) *uint32 { return &v }
