package web_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// error and downlink entries, from the real paths that make them: a
// rejected uplink of a known device, and a configuration queued in
// device_downlinks that coap-server sends in the answer to the next uplink.
func TestLiveLogsPageShowsErrorsAndDownlinks(t *testing.T) {
	b := newBrowser(t)
	dbURL, owner := seedDevice(t, device)
	var downlinkID int64
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		err = conn.QueryRow(ctx, `insert into public.device_downlinks (devid, config)
			values ($1, '{"heartbeat_interval": 600, "wifi_scan_interval": 0}') returning id`, device).Scan(&downlinkID)
		if err != nil {
			t.Fatal(err)
		}
	}()
	coap, _ := startCoAP(t, "127.0.0.1:0", "127.0.0.1:0", "DATABASE_URL", dbURL)
	// The downlink service loads pending rows in the background: wait until
	// it holds this one, or the uplink below would get no answer to carry.
	deadline := time.Now().Add(waitTimeout)
	for !coap.Downlinks().Holds(device, downlinkID) {
		if time.Now().After(deadline) {
			t.Fatalf("coap-server did not load downlink %d", downlinkID)
		}
		select {
		case <-time.After(20 * time.Millisecond): // poll interval, not a wait for a result
		case <-t.Context().Done():
			return
		}
	}
	relay, _ := startRelay(t, "127.0.0.1:0", coap.HTTPAddr(), dbURL)
	b.do("open the page", chromedp.Navigate("http://"+hostPort(t, relay.HTTPAddr())+"/?deviceId="+device+"&access_token="+userToken(t, owner, time.Hour)))
	b.waitState("live")

	// A wifi AP whose BSSID is not 6 bytes: 4.00, and an error entry.
	bad := plainUplink(device, 1, 20)
	bad.WifiAps = []*nbiotv1.WifiAp{{Bssid: []byte{1, 2, 3}}}
	if code := postUplink(t, coap, bad); code != codes.BadRequest {
		t.Fatalf("bad uplink answered %v, want 4.00", code)
	}
	b.waitFor("an error entry", `document.querySelector("li.entry.t-error") !== null`)
	if msg := eval[string](b, `document.querySelector("li.entry.t-error .message").textContent`); !strings.HasPrefix(msg, "Rejected uplink") {
		t.Errorf("error entry message %q", msg)
	}

	sendUplink(t, coap, plainUplink(device, 2, 20))
	// One row for the downlink: queued when coap-server loaded it, then
	// sent in the answer to the uplink, updated in place.
	b.waitFor("the downlink sent", `document.querySelector('li.entry.t-downlink[data-state="sent"]') !== null`)
	if n := eval[int](b, `document.querySelectorAll("li.entry.t-downlink").length`); n != 1 {
		t.Errorf("%d downlink rows, want 1", n)
	}
	if steps := eval[string](b, `[...document.querySelectorAll("li.entry.t-downlink .step.done")].map(s => s.dataset.step).join(",")`); steps != "queued,sent" {
		t.Errorf("downlink steps done: %s, want queued,sent", steps)
	}
	got := eval[[]string](b, `(() => { const li = document.querySelector("li.entry.t-downlink");
		return [li.dataset.type, li.querySelector(".message").textContent, li.querySelector(".f-config .value").textContent]; })()`)
	if got[0] != "downlink" || !strings.HasPrefix(got[1], "Sent configuration v") ||
		!strings.Contains(got[2], "heartbeat 10 min") || !strings.Contains(got[2], "wifi scan off") {
		t.Errorf("downlink entry = %q", got)
	}
	// Distinct at a glance: each type has its own colour bar.
	colours := eval[[]string](b, `["li.entry.t-uplink", "li.entry.t-error", "li.entry.t-downlink"].map(
		(s) => getComputedStyle(document.querySelector(s)).borderLeftColor)`)
	if colours[0] == colours[1] || colours[0] == colours[2] || colours[1] == colours[2] {
		t.Errorf("uplink, error and downlink entries share a colour: %q", colours)
	}
	// The device reports the version: the same row turns applied.
	v := uint32(downlinkID)
	applying := plainUplink(device, 3, 20)
	applying.Config = &nbiotv1.DeviceConfig{ConfigVersion: &v}
	sendUplink(t, coap, applying)
	b.waitFor("the downlink applied", `document.querySelector('li.entry.t-downlink[data-state="applied"]') !== null`)
	if steps := eval[string](b, `[...document.querySelectorAll("li.entry.t-downlink .step.done")].map(s => s.dataset.step).join(",") + " " + document.querySelectorAll("li.entry.t-downlink").length`); steps != "queued,sent,applied 1" {
		t.Errorf("downlink steps done and rows: %s, want queued,sent,applied in 1 row", steps)
	}
	t.Logf("screenshot: %s", b.screenshot("livelogs-error-downlink.png"))
	b.checkConsole()
}
