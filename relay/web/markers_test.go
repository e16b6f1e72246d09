package web_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// What no device console shows: missing uplinks between counters, counter
// resets as reboots, retransmissions on the uplink they repeat, a downlink's
// states in one row, and latency with a note when the clocks disagree.
func TestPageMarksGapsRebootsRetransmissionsDownlinks(t *testing.T) {
	b := newBrowser(t)
	s := newScriptedRelay(t)
	const dev = "MARK-1"
	b.do("open the page", chromedp.Navigate(s.page(dev)))
	s.waitConn(1)
	b.waitState("live")

	reboot := uplinkEntry(dev, 4, 0)
	reboot["data"].(map[string]any)["reboot"] = map[string]any{"reason": "watchdog", "count": 2}
	s.send(uplinkEntry(dev, 1, 40), uplinkEntry(dev, 2, 41), uplinkEntry(dev, 3, 44), reboot, uplinkEntry(dev, 5, 1))
	b.waitFor("5 uplinks", `document.querySelectorAll("#entries > li.entry").length === 5`)
	order := eval[string](b, `[...document.querySelectorAll("#entries > li")].map(li => li.classList.contains("marker")
		? li.dataset.kind + ":" + li.querySelector(".text").textContent : li.dataset.uplinkCount).join(" | ")`)
	if want := "1 | 0 | reboot:Counter reset #44 → #0 (reboot: watchdog) | 44 | missing:2 uplinks missing (#41 → #44) | 41 | 40"; order != want {
		t.Errorf("list:\n%s\nwant\n%s", order, want)
	}
	// Not colour alone: the markers carry an icon and words.
	if icons := eval[string](b, `[...document.querySelectorAll("#entries > li.marker .icon")].map(i => i.textContent).join("")`); icons != "↻⚠" {
		t.Errorf("marker icons %q", icons)
	}

	// The server reports that uplink seq 3 (#44) came again as a CoAP
	// retransmission: the uplink is marked, no new row.
	s.send(map[string]any{"seq": 6, "deviceId": dev, "timestamp": ts(0), "type": "status", "message": "Retransmission of uplink #44",
		"data": map[string]any{"retransmission": map[string]any{"of_seq": 3, "count": 2}}})
	b.waitFor("the retransmission mark", `document.querySelector(`+jsString(rowSel(44))+`).dataset.retransmissions === "2"`)
	if txt := eval[string](b, `document.querySelector(`+jsString(rowSel(44)+" .badge.retrans")+`).textContent`); txt != "retransmitted ×2" {
		t.Errorf("retransmission badge %q", txt)
	}
	if n := eval[int](b, `document.querySelectorAll("#entries > li.entry").length`); n != 5 {
		t.Errorf("%d rows after the retransmission, want still 5", n)
	}

	// Downlink 17: queued, then sent, then applied, in one row.
	dl := func(seq int, state, msg string) map[string]any {
		return map[string]any{"seq": seq, "deviceId": dev, "timestamp": ts(0), "type": "downlink", "message": msg,
			"data": map[string]any{"downlink_id": 17, "state": state, "config_version": 17, "config": map[string]any{"heartbeat_interval": 900, "config_version": 17}}}
	}
	s.send(dl(7, "queued", "Configuration v17 queued"))
	b.waitFor("the downlink row", `document.querySelector('li.entry[data-downlink-id="17"]') !== null`)
	steps := func() string {
		return eval[string](b, `(() => { const li = document.querySelector('li.entry[data-downlink-id="17"]');
			return li.dataset.state + " " + [...li.querySelectorAll(".step")].map(s => s.dataset.step + (s.classList.contains("done") ? "+" : "-")).join(",")
				+ " " + li.querySelector(".message").textContent; })()`)
	}
	if got := steps(); got != "queued queued+,sent-,applied- Configuration v17 queued" {
		t.Errorf("queued: %s", got)
	}
	s.send(uplinkEntry(dev, 8, 2), dl(9, "sent", "Sent configuration v17"))
	b.waitFor("sent", `document.querySelector('li.entry[data-downlink-id="17"]').dataset.state === "sent"`)
	s.send(uplinkEntry(dev, 10, 3), dl(11, "applied", "Configuration v17 applied"))
	b.waitFor("applied", `document.querySelector('li.entry[data-downlink-id="17"]').dataset.state === "applied"`)
	if got := steps(); got != "applied queued+,sent+,applied+ Configuration v17 applied" {
		t.Errorf("applied: %s", got)
	}
	if n := eval[int](b, `document.querySelectorAll('li.entry[data-type="downlink"]').length`); n != 1 {
		t.Errorf("%d downlink rows, want 1 updated in place", n)
	}
	// In place: the row stays below the uplinks that came after its first state.
	if got := shownCounts(b); got != "3,2,downlink,1,0,44,41,40" {
		t.Errorf("rows %s", got)
	}

	// Latency: receipt → screen in ms; an entry stamped in this browser's
	// future says the clocks disagree.
	lat := eval[string](b, `(() => { const l = document.querySelector(`+jsString(rowSel(3)+" .latency")+`); return l.className + "|" + l.dataset.ms + "|" + l.textContent; })()`)
	parts := strings.Split(lat, "|")
	if ms, err := strconv.Atoi(parts[1]); err != nil || parts[0] != "latency l-live" || ms < 0 || parts[2] != parts[1]+" ms" {
		t.Errorf("latency of #3: %q", lat)
	}
	if !eval[bool](b, `document.getElementById("clock-note").hidden`) {
		t.Error("clock note shown while the clocks agree")
	}
	future := uplinkEntry(dev, 12, 4)
	future["timestamp"] = ts(5 * time.Second)
	s.send(future)
	b.waitFor("the skew note", `!document.getElementById("clock-note").hidden`)
	if l := eval[string](b, `document.querySelector(`+jsString(rowSel(4)+" .latency")+`).className`); l != "latency l-skew" {
		t.Errorf("latency of the future entry: %q", l)
	}
	if note := eval[string](b, `document.getElementById("clock-note").textContent`); !strings.Contains(note, "clocks disagree") {
		t.Errorf("clock note %q", note)
	}
	t.Logf("screenshot: %s", b.screenshot("livelogs-markers.png"))
	b.checkConsole()
}
