package web_test

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/performance"
	"github.com/chromedp/chromedp"
)

// volume is what a flood of entries cost the page.
type volume struct {
	scriptMs, layoutMs, styleMs, taskMs float64 // Chromium's own counters (Performance.getMetrics)
	maxFrameMs, p95FrameMs              float64 // requestAnimationFrame intervals during the flood
	frames                              int
	wall                                time.Duration // first frame sent → last one counted on the page
	domRows                             int
}

// steady is the page holding 10,000 entries while a device keeps reporting.
type steady struct {
	maxFrameMs, p95FrameMs float64 // rAF intervals while one entry arrives every 50 ms
	filterMs               float64 // typing a text filter → the filtered list drawn
}

// trickle sends n more entries to the page of dev, one every 50 ms (a
// pace, not a wait for anything), measuring frames, then times a filter.
func trickle(b *browser, s *scriptedRelay, dev string, from, n int) steady {
	b.t.Helper()
	eval[bool](b, `(() => { window.stop_ = false; window.frames_ = []; let last = performance.now();
		const tick = (t) => { window.frames_.push(t - last); last = t; if (!window.stop_) requestAnimationFrame(tick); };
		requestAnimationFrame(tick); return true; })()`)
	for i := range n {
		s.send(uplinkEntry(dev, from+i, from+i))
		time.Sleep(50 * time.Millisecond)
	}
	b.waitFor("the trickle", fmt.Sprintf(`document.querySelector('li.entry[data-uplink-count="%d"]') !== null`, from+n-1))
	frames := eval[[]float64](b, `(window.stop_ = true, window.frames_.slice(1))`)
	var st steady
	if len(frames) > 0 {
		sort.Float64s(frames)
		st.maxFrameMs = frames[len(frames)-1]
		st.p95FrameMs = frames[len(frames)*95/100]
	}
	st.filterMs = eval[float64](b, `new Promise((done) => { const i = document.getElementById("search"); const t0 = performance.now();
		i.value = "uplink #99"; i.dispatchEvent(new Event("input", { bubbles: true }));
		requestAnimationFrame(() => requestAnimationFrame(() => { const ms = performance.now() - t0;
			i.value = ""; i.dispatchEvent(new Event("input", { bubbles: true })); done(ms); })); })`, chromedp.EvalAwaitPromise)
	return st
}

func (b *browser) perfMetrics() map[string]float64 {
	b.t.Helper()
	res, err := chromedp.Call(b.ctx, performance.GetMetrics, cdp.Empty{})
	if err != nil {
		b.t.Fatalf("Performance.getMetrics: %v", err)
	}
	m := map[string]float64{}
	for _, x := range res.Metrics {
		m[x.Name] = x.Value
	}
	return m
}

// flood opens a fresh page of dev on s and sends n uplink entries at once,
// and measures until the page counts them all.
func flood(b *browser, s *scriptedRelay, dev string, conn, n int) volume {
	b.t.Helper()
	b.do("open the page", chromedp.Navigate(s.page(dev)))
	s.waitConn(conn)
	b.waitState("live")
	if _, err := chromedp.Call(b.ctx, performance.Enable, performance.EnableParams{}); err != nil {
		b.t.Fatalf("Performance.enable: %v", err)
	}
	eval[bool](b, `(() => { window.frames_ = []; let last = performance.now();
		const tick = (t) => { window.frames_.push(t - last); last = t; if (!window.stop_) requestAnimationFrame(tick); };
		requestAnimationFrame(tick); return true; })()`)
	before := b.perfMetrics()
	entries := make([]map[string]any, n)
	for i := range entries {
		entries[i] = uplinkEntry(dev, i+1, i+1)
	}
	start := time.Now()
	s.send(entries...)
	b.waitFor(fmt.Sprintf("%d entries counted", n), fmt.Sprintf(`document.getElementById("count").textContent.startsWith("%d entries")`, n))
	wall := time.Since(start)
	after := b.perfMetrics()
	frames := eval[[]float64](b, `(window.stop_ = true, window.frames_.slice(1))`)
	v := volume{
		scriptMs: 1000 * (after["ScriptDuration"] - before["ScriptDuration"]),
		layoutMs: 1000 * (after["LayoutDuration"] - before["LayoutDuration"]),
		styleMs:  1000 * (after["RecalcStyleDuration"] - before["RecalcStyleDuration"]),
		taskMs:   1000 * (after["TaskDuration"] - before["TaskDuration"]),
		frames:   len(frames), wall: wall,
		domRows: eval[int](b, `document.querySelectorAll("#entries > li").length`),
	}
	if len(frames) > 0 {
		sort.Float64s(frames)
		v.maxFrameMs = frames[len(frames)-1]
		v.p95FrameMs = frames[len(frames)*95/100]
	}
	return v
}

// 10,000 entries at once: the DOM stays bounded (one window of 200 rows),
// the page keeps answering, and paging reaches the oldest. The figures are
// logged, not asserted (see BenchmarkPage10000Entries).
func TestPageStaysBoundedWith10000Entries(t *testing.T) {
	b := newBrowser(t)
	s := newScriptedRelay(t)
	v := flood(b, s, "VOL-1", 1, 10000)
	t.Logf("10,000 entries: script %.0f ms, layout %.0f ms, style %.0f ms, tasks %.0f ms; frames %d, p95 %.1f ms, max %.1f ms; %v until counted; %d rows in the DOM",
		v.scriptMs, v.layoutMs, v.styleMs, v.taskMs, v.frames, v.p95FrameMs, v.maxFrameMs, v.wall.Round(time.Millisecond), v.domRows)
	st := trickle(b, s, "VOL-1", 10001, 20)
	t.Logf("then one entry every 50 ms: frames p95 %.1f ms, max %.1f ms; a text filter over 10,000 drawn in %.1f ms", st.p95FrameMs, st.maxFrameMs, st.filterMs)
	if v.domRows != 200 {
		t.Errorf("%d rows in the DOM, want one window of 200", v.domRows)
	}
	// Beyond 10,000 the oldest fall off (the documented cap).
	b.waitFor("the cap", `document.getElementById("count").textContent === "10000 entries (last 10000 of 10020), showing 1–200"`)
	if top := eval[string](b, `document.querySelector("#entries > li.entry").dataset.uplinkCount`); top != "10020" {
		t.Errorf("top row is #%s, want #10020", top)
	}
	// Older pages, down to the oldest kept (#21).
	b.do("older", chromedp.Click(chromedp.CSS("#older")))
	b.waitFor("page 2", `document.querySelector("#entries > li.entry").dataset.uplinkCount === "9820"`)
	if !eval[bool](b, `!document.getElementById("newer-bar").hidden`) {
		t.Error("no way back to the newer entries")
	}
	// While looking at an older page, new entries do not move it.
	s.send(uplinkEntry("VOL-1", 10021, 10021))
	b.waitFor("counted", `document.getElementById("count").textContent.includes("of 10021")`)
	if top := eval[string](b, `document.querySelector("#entries > li.entry").dataset.uplinkCount`); top != "9820" {
		t.Errorf("older page moved: top row #%s, want #9820", top)
	}
	eval[bool](b, `(() => { for (let i = 0; i < 48; i++) document.getElementById("older").click(); return true; })()`)
	b.waitFor("the oldest page", `document.getElementById("older-bar").hidden`)
	if last := eval[string](b, `[...document.querySelectorAll("#entries > li.entry")].pop().dataset.uplinkCount`); last != "22" {
		t.Errorf("oldest row kept is #%s, want #22 (10,000 of 10,021)", last)
	}
	b.checkConsole()
}

// BenchmarkPage10000Entries reports what 10,000 entries arriving at once
// cost the page in Chromium: scripting, style and layout time, the longest
// and 95th-percentile frame, and the time until all are counted; then, with
// the 10,000 held, the frames while one entry arrives every 50 ms and the
// time a text filter takes to draw.
//
//	go test -run '^$' -bench Page10000 -benchtime 3x ./relay/web
func BenchmarkPage10000Entries(bb *testing.B) {
	b := newBrowser(bb)
	s := newScriptedRelay(bb)
	var sum volume
	var st steady
	n := 0
	for bb.Loop() {
		n++
		v := flood(b, s, "BENCH-1", n, 10000)
		x := trickle(b, s, "BENCH-1", 10001, 20)
		st.p95FrameMs += x.p95FrameMs
		st.maxFrameMs = max(st.maxFrameMs, x.maxFrameMs)
		st.filterMs += x.filterMs
		sum.scriptMs += v.scriptMs
		sum.layoutMs += v.layoutMs
		sum.styleMs += v.styleMs
		sum.maxFrameMs = max(sum.maxFrameMs, v.maxFrameMs)
		sum.p95FrameMs += v.p95FrameMs
		sum.wall += v.wall
	}
	f := float64(n)
	bb.ReportMetric(sum.scriptMs/f, "script-ms/10k")
	bb.ReportMetric(sum.layoutMs/f, "layout-ms/10k")
	bb.ReportMetric(sum.styleMs/f, "style-ms/10k")
	bb.ReportMetric(sum.p95FrameMs/f, "p95-frame-ms")
	bb.ReportMetric(sum.maxFrameMs, "max-frame-ms")
	bb.ReportMetric(float64(sum.wall.Milliseconds())/f, "shown-ms/10k")
	bb.ReportMetric(st.p95FrameMs/f, "steady-p95-frame-ms")
	bb.ReportMetric(st.maxFrameMs, "steady-max-frame-ms")
	bb.ReportMetric(st.filterMs/f, "filter-ms/10k")
}
