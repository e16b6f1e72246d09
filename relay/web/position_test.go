package web_test

import (
	"fmt"
	"testing"

	"github.com/chromedp/chromedp"
)

// The page opens with the tail, resumes with since=<last seq> after a
// reconnect, shows every entry exactly once, marks where history was lost,
// and shows entries without seq without moving its position.
func TestPageResumesWhereItLeftOff(t *testing.T) {
	b := newBrowser(t)
	s := newScriptedRelay(t)
	const dev = "POS-1"
	b.do("open the page", chromedp.Navigate(s.page(dev)))
	q := s.waitConn(1)
	if q.Get("tail") != "100" || q.Has("since") {
		t.Fatalf("first connection asked %v, want tail=100 and no since", q)
	}
	b.waitState("live")
	for i := 1; i <= 5; i++ {
		s.send(uplinkEntry(dev, i, i))
	}
	b.waitFor("5 uplinks", `document.querySelectorAll("#entries > li.entry").length === 5`)

	// A relay status entry has no seq: shown, position unchanged.
	s.send(map[string]any{"deviceId": dev, "timestamp": ts(0), "type": "status",
		"message": "Live stream interrupted: reconnecting to coap-server", "data": map[string]any{"upstream": "lost"}})
	b.waitFor("the status entry", `document.querySelector('li.entry.t-status') !== null`)
	s.drop()
	q = s.waitConn(2)
	if q.Get("since") != "5" || q.Has("tail") {
		t.Fatalf("reconnection asked %v, want since=5 and no tail", q)
	}
	b.waitState("live")
	// The server repeats 4 and 5 (it must not, but the page must not show
	// them twice either), then goes on.
	s.send(uplinkEntry(dev, 4, 4), uplinkEntry(dev, 5, 5), uplinkEntry(dev, 6, 6))
	b.waitFor("uplink #6", `document.querySelector(`+jsString(rowSel(6))+`) !== null`)
	if got, want := shownCounts(b), "6,status,5,4,3,2,1"; got != want {
		t.Errorf("entries = %s, want %s", got, want)
	}

	// History lost: the server says so without seq; the list marks the
	// place, and the entries that follow are shown even though a reset
	// stream numbers them lower.
	s.drop()
	q = s.waitConn(3)
	if q.Get("since") != "6" {
		t.Fatalf("third connection asked %v, want since=6", q)
	}
	s.send(map[string]any{"deviceId": dev, "timestamp": ts(0), "type": "status",
		"message": "Earlier entries are no longer retained", "data": map[string]any{"recovered": false}},
		uplinkEntry(dev, 2, 9), uplinkEntry(dev, 3, 10))
	b.waitFor("uplink #10", `document.querySelector(`+jsString(rowSel(10))+`) !== null`)
	if got, want := shownCounts(b), "10,9,status,6,status,5,4,3,2,1"; got != want {
		t.Errorf("entries = %s, want %s", got, want)
	}
	gap := eval[[]string](b, `(() => { const li = document.querySelector("li.entry.history-gap");
		return li ? [li.querySelector(".type").textContent, li.querySelector(".message").textContent] : []; })()`)
	if len(gap) != 2 || gap[0] != "gap" || gap[1] != "Earlier entries are no longer retained" {
		t.Errorf("history gap row = %q", gap)
	}
	// The gap is marked even when status entries are filtered out.
	b.do("hide status", chromedp.Click(chromedp.CSS(`#types input[value="status"]`)))
	b.waitFor("status hidden", `document.querySelectorAll("#entries > li.entry.t-status").length === 1`)
	b.do("show status", chromedp.Click(chromedp.CSS(`#types input[value="status"]`)))
	s.drop()
	if q = s.waitConn(4); q.Get("since") != "3" {
		t.Errorf("after the gap the page resumes with %v, want since=3", q)
	}
	t.Logf("screenshot: %s", b.screenshot("livelogs-position.png"))
	b.checkConsole()
}

// livelogs.js on its own, as an embedder uses it: tail option, onGap, and
// lastSeq().
func TestEmbeddedClientTailAndGap(t *testing.T) {
	b := newBrowser(t)
	s := newScriptedRelay(t)
	const dev = "POS-2"
	connectEmbedded(b, s, `window.got = []; window.gaps = []; window.states = [];`,
		`deviceId: "`+dev+`", tail: 7,
			onEntry: (e) => window.got.push(e.seq === undefined ? e.type : e.seq),
			onGap: (e) => window.gaps.push(e.message),
			onState: (st) => window.states.push(st)`)
	if q := s.waitConn(1); q.Get("tail") != "7" {
		t.Fatalf("tail option: connection asked %v", q)
	}
	b.waitFor("live", `window.states.includes("live")`)
	// Lost before any entry: the tail again, not a since.
	s.drop()
	if q := s.waitConn(2); q.Get("tail") != "7" || q.Has("since") {
		t.Fatalf("reconnection before any seq asked %v, want tail=7 again", q)
	}
	s.send(uplinkEntry(dev, 10, 1), uplinkEntry(dev, 11, 2), uplinkEntry(dev, 11, 2),
		map[string]any{"deviceId": dev, "timestamp": ts(0), "type": "status", "message": "Earlier entries are no longer retained",
			"data": map[string]any{"recovered": false}},
		uplinkEntry(dev, 1, 3))
	b.waitFor("four callbacks", `window.got.length === 4`)
	got := eval[string](b, `JSON.stringify([window.got, window.gaps, window.conn.lastSeq()])`)
	if want := `[[10,11,"status",1],["Earlier entries are no longer retained"],1]`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	// A gap, then the connection drops before the next entry: the page
	// resumes after the last seq it showed, not with the tail (which
	// repeated what it showed).
	s.send(map[string]any{"deviceId": dev, "timestamp": ts(0), "type": "status", "message": "Earlier entries are no longer retained",
		"data": map[string]any{"recovered": false}})
	b.waitFor("the second gap", `window.gaps.length === 2`)
	s.drop()
	if q := s.waitConn(3); q.Get("since") != "1" || q.Has("tail") {
		t.Fatalf("reconnection after a gap asked %v, want since=1", q)
	}
	// The server resends what it holds after a recovered:false: the page
	// shows an entry it has shown once only, and the new ones.
	s.send(map[string]any{"deviceId": dev, "timestamp": ts(0), "type": "status", "message": "Earlier entries are no longer retained",
		"data": map[string]any{"recovered": false}},
		uplinkEntry(dev, 2, 4))
	b.waitFor("the entry after the gap", `window.got.includes(2)`)
	if got := eval[string](b, `JSON.stringify(window.got)`); got != `[10,11,"status",1,"status","status",2]` {
		t.Errorf("got %s", got)
	}
	eval[bool](b, `window.conn.close(), true`)
	b.waitFor("closed", `window.states[window.states.length - 1] === "closed"`)
	b.checkConsole()
}

// TestEmbeddedClientTokenExpiryKeepsTheBackoffShort: every 4401 (the
// token expired, hourly) after a connection that lasted is retry number 1
// again. Before, each counted on from the last, so after a few hours every
// token refresh left the page without entries for 15-30 s.
func TestEmbeddedClientTokenExpiryKeepsTheBackoffShort(t *testing.T) {
	b := newBrowser(t)
	s := newScriptedRelay(t)
	const dev = "POS-3"
	connectEmbedded(b, s, `window.retries = []; window.lives = 0;`,
		`deviceId: "`+dev+`", backoff: { initialMs: 20, stableMs: 0 },
			onState: (st, info) => { if (st === "live") window.lives++; if (st === "reconnecting" && info.delayMs !== undefined) window.retries.push(info.attempt); }`)
	s.waitConn(1)
	for i := 1; i <= 3; i++ {
		b.waitFor("live", fmt.Sprintf(`window.lives === %d`, i))
		s.closeWith(4401, "token expired")
		s.waitConn(i + 1)
	}
	if got := eval[string](b, `JSON.stringify(window.retries)`); got != `[1,1,1]` {
		t.Errorf("retry numbers after three token expiries %s, want [1,1,1]", got)
	}
	eval[bool](b, `window.conn.close(), true`)
	b.checkConsole()
}

// connectEmbedded opens a blank page of the scripted relay's origin, runs
// setup, and connects livelogs.js as an embedder would, with options
// (JavaScript object members) besides url; the client is window.conn.
func connectEmbedded(b *browser, s *scriptedRelay, setup, options string) {
	b.do("open a blank page of the relay's origin", chromedp.Navigate(s.srv.URL+"/static/livelogs.js"))
	eval[bool](b, `import("/static/livelogs.js").then((m) => {
		`+setup+`
		window.conn = m.connectLiveLogs({ url: location.origin, `+options+` });
		return true; })`, chromedp.EvalAwaitPromise)
}
