package web_test

import (
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// uplinkCounts is the uplink counters shown, newest first, without the
// status rows.
func uplinkCounts(b *browser) string {
	return eval[string](b, `[...document.querySelectorAll('#entries > li.entry[data-type="uplink"]')].map(li => li.dataset.uplinkCount).join(",")`)
}

// Opened after a device reported: the page shows what it missed (tail),
// through the real relay and coap-server's retained stream.
func TestPageOpensWithHistory(t *testing.T) {
	b := newBrowser(t)
	dbURL, owner := seedDevice(t, device)
	coap, _ := startCoAP(t, "127.0.0.1:0", "127.0.0.1:0")
	relay, _ := startRelay(t, "127.0.0.1:0", coap.HTTPAddr(), dbURL)
	for n := 1; n <= 5; n++ {
		sendUplink(t, coap, plainUplink(device, uint32(n), 20))
	}
	b.do("open the page", chromedp.Navigate("http://"+hostPort(t, relay.HTTPAddr())+"/?deviceId="+device+"&access_token="+userToken(t, owner, time.Hour)))
	b.waitState("live")
	b.waitFor("the 5 earlier uplinks", `document.querySelectorAll('#entries > li.entry[data-type="uplink"]').length >= 5`)
	if got := uplinkCounts(b); got != "5,4,3,2,1" {
		t.Errorf("uplinks shown = %s, want 5,4,3,2,1", got)
	}
	sendUplink(t, coap, plainUplink(device, 6, 20))
	b.waitFor("uplink #6", `document.querySelector(`+jsString(rowSel(6))+`) !== null`)
	if got := uplinkCounts(b); got != "6,5,4,3,2,1" {
		t.Errorf("uplinks shown = %s, want 6,5,4,3,2,1", got)
	}
	t.Logf("screenshot: %s", b.screenshot("livelogs-history.png"))
	b.checkConsole()
}

// coap-server restarts (same DATA_DIR, same ports) while the page is open,
// and uplinks arrive before the relay's link is back: each is shown exactly
// once, in order.
func TestPageShowsEveryUplinkOnceAcrossCoAPRestart(t *testing.T) {
	b := newBrowser(t)
	dbURL, owner := seedDevice(t, device)
	coap, stopCoAP := startCoAP(t, "127.0.0.1:0", "127.0.0.1:0")
	coapUDP, coapHTTP := hostPort(t, coap.CoAPAddr()), hostPort(t, coap.HTTPAddr())
	relay, _ := startRelay(t, "127.0.0.1:0", coap.HTTPAddr(), dbURL)
	b.do("open the page", chromedp.Navigate("http://"+hostPort(t, relay.HTTPAddr())+"/?deviceId="+device+"&access_token="+userToken(t, owner, time.Hour)))
	b.waitState("live")
	for n := 1; n <= 3; n++ {
		sendUplink(t, coap, plainUplink(device, uint32(n), 20))
	}
	b.waitFor("uplink #3", `document.querySelector(`+jsString(rowSel(3))+`) !== null`)

	stopCoAP()
	b.waitState("upstream-lost")
	coap, _ = startCoAP(t, coapUDP, coapHTTP)
	for n := 4; n <= 8; n++ { // at once: most arrive before the relay has reconnected
		sendUplink(t, coap, plainUplink(device, uint32(n), 20))
	}
	b.waitFor("uplink #8", `document.querySelector(`+jsString(rowSel(8))+`) !== null`)
	sendUplink(t, coap, plainUplink(device, 9, 20))
	b.waitFor("uplink #9", `document.querySelector(`+jsString(rowSel(9))+`) !== null`)
	if got := uplinkCounts(b); got != "9,8,7,6,5,4,3,2,1" {
		t.Errorf("uplinks shown = %s, want each of 9..1 once", got)
	}
	if gaps := eval[int](b, `document.querySelectorAll("#entries > li.marker, #entries > li.history-gap").length`); gaps != 0 {
		t.Errorf("%d gap markers, want none (nothing was lost)", gaps)
	}
	t.Logf("entries: %s", shownCounts(b))
	t.Logf("screenshot: %s", b.screenshot("livelogs-coap-restart.png"))
	b.checkConsole()
}
