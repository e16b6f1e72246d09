package web_test

// Driving Debian's chromium headless with chromedp: start it, wait on the
// page's observable state (never on the clock), read values, and collect
// what the page printed to the console so that an uncaught exception or a
// Content-Security-Policy violation fails the test.

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

const chromiumPath = "/usr/bin/chromium"

// waitTimeout bounds every wait on the page: generous for a shared 2-core
// machine, and still a clear failure rather than a hang.
const waitTimeout = 30 * time.Second

type browser struct {
	t   testing.TB
	ctx context.Context

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
}

// newBrowser starts a fresh headless chromium (docs/pitfalls.md#browsers: flags, own profile)
// for the test. Without chromium the test is skipped locally and fails in CI.
func newBrowser(t testing.TB) *browser {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing: scripts/test.sh installs Debian's chromium", chromiumPath)
		}
		t.Skipf("%s is missing (apt install chromium, or run scripts/test.sh)", chromiumPath)
	}
	profile, err := os.MkdirTemp("", "nbiot-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1100, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc() // waits for the browser process to exit
		if err := os.RemoveAll(profile); err != nil {
			t.Logf("chromium profile %s left behind: %v", profile, err)
		}
	})
	b := &browser{t: t, ctx: ctx}
	// The first action starts the browser; it must run on the long-lived
	// context (a timeout here would stop the whole browser).
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, m)
			b.mu.Unlock()
		}
	}()
	return b
}

// do runs actions with a bound on their duration.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v\npage: %s", what, err, b.snapshot())
	}
}

// waitFor polls a JavaScript predicate until it is truthy.
func (b *browser) waitFor(what, predicate string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitTimeout+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](predicate,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(waitTimeout)))
	if err != nil {
		b.t.Fatalf("waiting for %s (%s): %v\npage: %s", what, predicate, err, b.snapshot())
	}
}

// eval evaluates a JavaScript expression whose value is JSON-decoded into T.
func eval[T any](b *browser, expr string, opts ...chromedp.EvaluateOption) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, opts...))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v\npage: %s", expr, err, b.snapshot())
	}
	return v
}

// waitState waits for the connection indicator's data-state.
func (b *browser) waitState(state string) {
	b.t.Helper()
	b.waitFor("connection state "+state, `document.getElementById("conn").dataset.state === `+jsString(state))
}

// snapshot is the indicator and the first entries, for failure messages.
func (b *browser) snapshot() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		`(document.getElementById("conn")||{dataset:{}}).dataset.state + " | " + (document.body ? document.body.innerText.slice(0, 1500) : "")`))
	if err != nil {
		return "(unavailable: " + err.Error() + ")"
	}
	return s
}

// screenshot saves a PNG of the whole page under the repository's
// artifacts/ (gitignored), for a person to look at after the run.
func (b *browser) screenshot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	dir := filepath.Join("..", "..", "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	return path
}

// checkConsole fails the test on uncaught exceptions and CSP violations.
// Network errors are expected (the relay is down on purpose at times).
func (b *browser) checkConsole() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.console {
		if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			b.t.Errorf("page console: %s %s:%d: %s", m.Type, m.URL, m.Line+1, m.Text)
		}
	}
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
