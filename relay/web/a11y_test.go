package web_test

import (
	"testing"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// richEntries are one of each kind of row, with every uplink field.
func richEntries(dev string) []map[string]any {
	rich := uplinkEntry(dev, 2, 44)
	d := rich["data"].(map[string]any)
	d["wifi_count"] = 3
	d["battery_mv"] = 3600
	d["gnss"] = map[string]any{"lat": 52.52, "lon": 13.405, "accuracy_m": 8}
	d["reboot"] = map[string]any{"reason": "watchdog", "count": 3}
	d["config"] = map[string]any{"heartbeat_interval": 3600, "fw_version": "1.2.3-rc.1+build.20261201", "hw_version": "revB", "config_version": 7}
	return []map[string]any{
		uplinkEntry(dev, 1, 41), rich,
		{"seq": 3, "deviceId": dev, "timestamp": ts(0), "type": "status", "message": "Retransmission of uplink #44",
			"data": map[string]any{"retransmission": map[string]any{"of_seq": 2, "count": 3}}},
		{"seq": 4, "deviceId": dev, "timestamp": ts(0), "type": "downlink", "message": "Sent configuration v7",
			"data": map[string]any{"downlink_id": 7, "state": "sent", "config_version": 7, "config": map[string]any{"heartbeat_interval": 900}}},
		{"seq": 5, "deviceId": dev, "timestamp": ts(0), "type": "error", "message": "Rejected uplink: wifi_aps[0].bssid must be 6 bytes", "data": nil},
		{"deviceId": dev, "timestamp": ts(0), "type": "status", "message": "Earlier entries are no longer retained", "data": map[string]any{"recovered": false}},
	}
}

// The page at 360 px wide (a phone): nothing scrolls sideways; and every
// control has a name a screen reader can say.
func TestPageAt360PixelsAndAccessibleNames(t *testing.T) {
	b := newBrowser(t)
	s := newScriptedRelay(t)
	const dev = "A11Y-PHONE-0123456789"
	b.do("a phone-sized window", chromedp.EmulateViewport(360, 780))
	b.do("open the page", chromedp.Navigate(s.page(dev)))
	s.waitConn(1)
	b.waitState("live")
	s.send(richEntries(dev)...)
	b.waitFor("the rows", `document.querySelectorAll("#entries > li.entry").length === 5`)
	if w := eval[int](b, `document.documentElement.scrollWidth`); w > 360 {
		t.Errorf("page is %d px wide at a 360 px viewport: it scrolls sideways", w)
	}
	wide := eval[[]string](b, `[...document.querySelectorAll("body *")].filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.right > 361; })
		.slice(0, 5).map(e => e.tagName + "." + e.className + "#" + e.id)`)
	if len(wide) > 0 {
		t.Errorf("elements past the right edge: %q", wide)
	}
	unnamed := eval[[]string](b, `[...document.querySelectorAll("input, select, textarea, button")].filter(e => {
		if (e.closest("[hidden]")) return false;
		const label = e.labels && e.labels.length ? e.labels[0].textContent.trim() : "";
		return !(label || e.getAttribute("aria-label") || (e.tagName === "BUTTON" && e.textContent.trim()));
	}).map(e => e.tagName + "#" + e.id)`)
	if len(unnamed) > 0 {
		t.Errorf("controls without an accessible name: %q", unnamed)
	}
	roles := eval[string](b, `[document.getElementById("conn").getAttribute("role"), document.getElementById("conn").getAttribute("aria-live"),
		document.getElementById("announce").getAttribute("aria-live"), document.querySelector("#entries").getAttribute("aria-label")].join("|")`)
	if roles != "status|polite|polite|Entries, newest first" {
		t.Errorf("live regions and list label: %s", roles)
	}
	// Colour is never the only cue: each row names its type in words, and
	// markers carry words and an icon.
	if bad := eval[[]string](b, `[...document.querySelectorAll("#entries > li.entry")].filter(li => !li.querySelector(".type").textContent.trim()).map(li => li.dataset.rowId)`); len(bad) > 0 {
		t.Errorf("rows without a type word: %q", bad)
	}
	t.Logf("screenshot: %s", b.screenshot("livelogs-360px.png"))
	b.checkConsole()
}

// Dark mode follows the system (prefers-color-scheme), text stays legible.
func TestPageDarkMode(t *testing.T) {
	b := newBrowser(t)
	s := newScriptedRelay(t)
	const dev = "A11Y-DARK"
	if _, err := chromedp.Call(b.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}},
	}); err != nil {
		t.Fatalf("emulate dark mode: %v", err)
	}
	b.do("open the page", chromedp.Navigate(s.page(dev)))
	s.waitConn(1)
	b.waitState("live")
	s.send(richEntries(dev)...)
	b.waitFor("the rows", `document.querySelectorAll("#entries > li.entry").length === 5`)
	// Relative luminance (WCAG) of the page and of a row's text.
	lum := eval[[]float64](b, `(() => {
		const L = (css) => { const [r, g, b] = css.match(/[\d.]+/g).slice(0, 3).map(Number).map(v => v / 255)
			.map(c => c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4)); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
		const li = document.querySelector("#entries > li.entry");
		const err = document.querySelector("#entries > li.entry.t-error");
		return [L(getComputedStyle(document.body).backgroundColor), L(getComputedStyle(li).backgroundColor), L(getComputedStyle(li.querySelector(".message")).color),
			L(getComputedStyle(err).backgroundColor), L(getComputedStyle(err.querySelector(".message")).color)];
	})()`)
	if lum[0] > 0.05 || lum[1] > 0.05 {
		t.Errorf("backgrounds not dark: luminance %v", lum[:2])
	}
	if contrast := (lum[2] + 0.05) / (lum[1] + 0.05); contrast < 4.5 {
		t.Errorf("message text contrast %.1f:1 on the row, want at least 4.5:1", contrast)
	}
	if contrast := (lum[4] + 0.05) / (lum[3] + 0.05); contrast < 4.5 {
		t.Errorf("error message contrast %.1f:1, want at least 4.5:1", contrast)
	}
	t.Logf("screenshot: %s", b.screenshot("livelogs-dark.png"))
	b.checkConsole()
}
