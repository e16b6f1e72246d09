package web_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// allowDownloads makes chromium save downloads in a fresh directory.
func (b *browser) allowDownloads() string {
	b.t.Helper()
	dir := b.t.TempDir()
	events := true
	if _, err := chromedp.CallBrowser(b.ctx, cdpbrowser.SetDownloadBehavior, cdpbrowser.SetDownloadBehaviorParams{
		Behavior: cdpbrowser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dir, EventsEnabled: &events,
	}); err != nil {
		b.t.Fatalf("set download behaviour: %v", err)
	}
	return dir
}

// waitDownload waits for one finished file with the extension in dir.
func waitDownload(t *testing.T, dir, ext string) []byte {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		matches, _ := filepath.Glob(filepath.Join(dir, "*"+ext))
		if len(matches) == 1 {
			if b, err := os.ReadFile(matches[0]); err == nil && len(b) > 0 {
				return b
			}
		}
		if time.Now().After(deadline) {
			entries, _ := os.ReadDir(dir)
			t.Fatalf("no %s download in %s (%v)", ext, dir, entries)
		}
		time.Sleep(50 * time.Millisecond) // polling a directory: nothing to wait on
	}
}

// setSearch replaces the text filter as typing would.
func setSearch(b *browser, text string) {
	b.t.Helper()
	eval[bool](b, `(() => { const i = document.getElementById("search"); i.value = `+jsString(text)+`;
		i.dispatchEvent(new Event("input", { bubbles: true })); return true; })()`)
}

// shownSeqs is the seq of every entry row shown, top (newest) first.
func shownSeqs(b *browser) string {
	return eval[string](b, `[...document.querySelectorAll("#entries > li.entry")].map(li => li.dataset.seq || "-").join(",")`)
}

func TestPageFilterPauseClearExport(t *testing.T) {
	b := newBrowser(t)
	downloads := b.allowDownloads()
	s := newScriptedRelay(t)
	const dev = "WORK-1"
	b.do("open the page", chromedp.Navigate(s.page(dev)))
	s.waitConn(1)
	b.waitState("live")
	for i := 1; i <= 4; i++ {
		s.send(uplinkEntry(dev, i, i))
	}
	s.send(map[string]any{"seq": 5, "deviceId": dev, "timestamp": ts(0), "type": "error", "message": "Rejected uplink: bssid, with \"quotes\"", "data": nil},
		map[string]any{"seq": 6, "deviceId": dev, "timestamp": ts(0), "type": "downlink", "message": "Sent configuration v3",
			"data": map[string]any{"downlink_id": 3, "state": "sent", "config_version": 3, "config": map[string]any{"heartbeat_interval": 900}}},
		uplinkEntry(dev, 7, 5))
	b.waitFor("7 rows", `document.querySelectorAll("#entries > li.entry").length === 7`)

	// Type filter: no uplinks.
	b.do("hide uplinks", chromedp.Click(chromedp.CSS(`#types input[value="uplink"]`)))
	b.waitFor("uplinks hidden", `document.querySelectorAll("#entries > li.entry").length === 2`)
	if got := shownSeqs(b); got != "6,5" {
		t.Errorf("without uplinks: %s, want 6,5", got)
	}
	if c := eval[string](b, `document.getElementById("count").textContent`); c != "7 entries, 2 match the filter" {
		t.Errorf("count %q", c)
	}
	b.do("show uplinks", chromedp.Click(chromedp.CSS(`#types input[value="uplink"]`)))
	// Text filter, in messages and data alike.
	b.do("filter text", chromedp.SendKeys(chromedp.CSS("#search"), "uplink #3"))
	b.waitFor("one match", `document.querySelectorAll("#entries > li.entry").length === 1`)
	if got := shownSeqs(b); got != "3" {
		t.Errorf("text filter: %s, want 3", got)
	}
	setSearch(b, "heartbeat_interval")
	b.waitFor("the downlink", `document.querySelectorAll("#entries > li.entry").length === 1 && document.querySelector("#entries > li.entry").dataset.seq === "6"`)
	setSearch(b, "")
	b.waitFor("all rows again", `document.querySelectorAll("#entries > li.entry").length === 7`)

	// Local time shown, UTC on hover.
	tm := eval[[]string](b, `(() => { const t = document.querySelector("#entries > li.entry time"); return [t.textContent, t.title, t.dateTime]; })()`)
	if !strings.HasSuffix(tm[1], " UTC") || strings.Replace(strings.Replace(tm[1], " UTC", "Z", 1), " ", "T", 1) != tm[2] {
		t.Errorf("time %q: want UTC (%s) on hover", tm, tm[2])
	}

	// Pause: arrivals are held back and counted, then shown in order.
	b.do("pause", chromedp.Click(chromedp.CSS("#pause")))
	s.send(uplinkEntry(dev, 8, 6), uplinkEntry(dev, 9, 7), uplinkEntry(dev, 10, 8))
	b.waitFor("3 held back", `document.getElementById("held").textContent.startsWith("Paused: 3 new entries held back")`)
	if got := shownSeqs(b); got != "7,6,5,4,3,2,1" {
		t.Errorf("while paused the list changed: %s", got)
	}
	if p := eval[string](b, `document.getElementById("pause").textContent + "|" + document.getElementById("pause").getAttribute("aria-pressed")`); p != "Resume (3)|true" {
		t.Errorf("pause button %q", p)
	}
	t.Logf("screenshot: %s", b.screenshot("livelogs-paused.png"))
	b.do("resume", chromedp.Click(chromedp.CSS("#pause")))
	b.waitFor("10 rows", `document.querySelectorAll("#entries > li.entry").length === 10`)
	if got := shownSeqs(b); got != "10,9,8,7,6,5,4,3,2,1" {
		t.Errorf("after resume: %s", got)
	}

	// Export what is shown (the error and the downlink filtered out).
	b.do("hide errors and downlinks", chromedp.Click(chromedp.CSS(`#types input[value="error"]`)), chromedp.Click(chromedp.CSS(`#types input[value="downlink"]`)))
	b.waitFor("8 rows", `document.querySelectorAll("#entries > li.entry").length === 8`)
	shown := strings.Split(shownSeqs(b), ",")
	b.do("export JSON lines", chromedp.Click(chromedp.CSS("#export-jsonl")))
	jl := waitDownload(t, downloads, ".jsonl")
	lines := strings.Split(strings.TrimSuffix(string(jl), "\n"), "\n")
	if len(lines) != len(shown) {
		t.Fatalf("%d JSON lines, %d rows shown", len(lines), len(shown))
	}
	for i, line := range lines {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %d does not parse: %v: %s", i+1, err, line)
		}
		// Oldest first in the file, newest first on screen.
		if want := shown[len(shown)-1-i]; fmt.Sprint(e["seq"]) != want || e["deviceId"] != dev || e["type"] != "uplink" {
			t.Errorf("line %d = %s, want the uplink with seq %s", i+1, line, want)
		}
	}
	b.do("show everything, export CSV", chromedp.Click(chromedp.CSS(`#types input[value="error"]`)), chromedp.Click(chromedp.CSS(`#types input[value="downlink"]`)),
		chromedp.Click(chromedp.CSS("#export-csv")))
	rows, err := csv.NewReader(bytes.NewReader(waitDownload(t, downloads, ".csv"))).ReadAll()
	if err != nil {
		t.Fatalf("CSV does not parse: %v", err)
	}
	if len(rows) != 11 || strings.Join(rows[0], ",") != "seq,timestamp,deviceId,type,message,data" {
		t.Fatalf("CSV has %d rows, header %q", len(rows), rows[0])
	}
	if r := rows[5]; r[0] != "5" || r[3] != "error" || r[4] != `Rejected uplink: bssid, with "quotes"` || r[5] != "" {
		t.Errorf("CSV error row %q", r)
	}
	var data map[string]any
	if err := json.Unmarshal([]byte(rows[6][5]), &data); err != nil || data["downlink_id"] != 3.0 {
		t.Errorf("CSV downlink data %q: %v", rows[6][5], err)
	}

	// Clear empties the list; new entries still come.
	b.do("clear", chromedp.Click(chromedp.CSS("#clear")))
	b.waitFor("empty", `document.querySelectorAll("#entries > li").length === 0 && !document.getElementById("empty").hidden`)
	s.send(uplinkEntry(dev, 11, 9))
	b.waitFor("one row", `document.querySelectorAll("#entries > li.entry").length === 1`)
	b.checkConsole()
}

// The entry's full JSON on click and with the keyboard; arrows move
// between entries.
func TestPageEntryDetailsAndKeyboard(t *testing.T) {
	b := newBrowser(t)
	s := newScriptedRelay(t)
	const dev = "KEYS-1"
	b.do("open the page", chromedp.Navigate(s.page(dev)))
	s.waitConn(1)
	b.waitState("live")
	s.send(uplinkEntry(dev, 1, 1), uplinkEntry(dev, 2, 2), uplinkEntry(dev, 3, 3))
	b.waitFor("3 rows", `document.querySelectorAll("#entries > li.entry").length === 3`)
	b.do("click uplink #2", chromedp.Click(chromedp.CSS(rowSel(2)+" .message")))
	b.waitFor("its JSON", `document.querySelector(`+jsString(rowSel(2)+" pre.json")+`) !== null`)
	var e map[string]any
	if err := json.Unmarshal([]byte(eval[string](b, `document.querySelector(`+jsString(rowSel(2)+" pre.json")+`).textContent`)), &e); err != nil || e["seq"] != 2.0 {
		t.Errorf("full JSON of #2: %v %v", e, err)
	}
	if f := eval[string](b, `document.activeElement.dataset.uplinkCount || ""`); f != "2" {
		t.Errorf("focus on %q after the click, want uplink #2", f)
	}
	// Keyboard: down to #1, Enter opens it, Home goes to the newest.
	b.do("ArrowDown, Enter", chromedp.KeyEvent(kb.ArrowDown), chromedp.KeyEvent(kb.Enter))
	b.waitFor("JSON of #1", `document.querySelector(`+jsString(rowSel(1)+" pre.json")+`) !== null`)
	b.do("Home, Enter", chromedp.KeyEvent(kb.Home), chromedp.KeyEvent(kb.Enter))
	b.waitFor("JSON of #3", `document.querySelector(`+jsString(rowSel(3)+" pre.json")+`) !== null`)
	if exp := eval[string](b, `[...document.querySelectorAll("#entries > li.entry")].map(li => li.getAttribute("aria-expanded")).join(",")`); exp != "true,true,true" {
		t.Errorf("aria-expanded = %s", exp)
	}
	// One entry in the tab order (roving tabindex).
	if n := eval[int](b, `document.querySelectorAll('#entries > li[tabindex="0"]').length`); n != 1 {
		t.Errorf("%d entries in the tab order, want 1", n)
	}
	// The live region says how many arrived, not each one.
	s.send(uplinkEntry(dev, 4, 4), uplinkEntry(dev, 5, 5))
	b.waitFor("the announcement", `/^[0-9]+ new entr(y|ies)$/.test(document.getElementById("announce").textContent)`)
	if live := eval[string](b, `document.getElementById("announce").getAttribute("aria-live")`); live != "polite" {
		t.Errorf("announce aria-live = %q", live)
	}
	t.Logf("screenshot: %s", b.screenshot("livelogs-details.png"))
	b.checkConsole()
}

// The export formats on their own: RFC 4180 quoting, CRLF, and cells a
// spreadsheet would run as formulas made inert.
func TestExportFormats(t *testing.T) {
	b := newBrowser(t)
	s := newScriptedRelay(t)
	b.do("open a page of the relay", chromedp.Navigate(s.srv.URL+"/static/export.js"))
	got := eval[string](b, `import("/static/export.js").then((m) => JSON.stringify([
		m.toCSV([{ seq: 1, timestamp: "2026-01-15T10:30:00.000Z", deviceId: "D", type: "error", message: "=HYPERLINK(\"x\")", data: null },
			{ seq: 2, deviceId: "D", type: "uplink", message: "line\nbreak, comma", data: { a: "b" } }]),
		m.toJSONLines([{ seq: 1, type: "uplink" }, { type: "status" }]),
		m.fileName("ABC", "csv", new Date("2026-01-15T10:30:00.123Z"))]))`, chromedp.EvalAwaitPromise)
	want := `["seq,timestamp,deviceId,type,message,data\r\n` +
		`1,2026-01-15T10:30:00.000Z,D,error,\"'=HYPERLINK(\"\"x\"\")\",\r\n` +
		`2,,D,uplink,\"line\nbreak, comma\",\"{\"\"a\"\":\"\"b\"\"}\"\r\n",` +
		`"{\"seq\":1,\"type\":\"uplink\"}\n{\"type\":\"status\"}\n",` +
		`"nbiot-ABC-2026-01-15T10-30-00-123Z.csv"]`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	b.checkConsole()
}
