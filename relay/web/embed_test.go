package web_test

// livelogs.js as the README tells an existing frontend to use it: a page on
// another origin imports the module from the relay, connects with a token
// function, and gets entries and states through its callbacks.

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

const embedderPage = `<!doctype html><title>an existing app</title>
<script type="module">
import { connectLiveLogs } from "%[1]s/static/livelogs.js";
window.states = [];
window.entries = [];
connectLiveLogs({
  url: "%[1]s",
  deviceId: "%[2]s",
  token: async () => "%[3]s",
  onEntry: (e) => window.entries.push(e),
  onState: (s) => window.states.push(s),
});
</script>`

func TestEmbeddedLiveLogsFromAnotherOrigin(t *testing.T) {
	b := newBrowser(t)
	dbURL, owner := seedDevice(t, device)
	coap, _ := startCoAP(t, "127.0.0.1:0", "127.0.0.1:0")
	app := httptest.NewUnstartedServer(nil)
	appOrigin := "http://" + app.Listener.Addr().String()
	relay, _ := startRelay(t, "127.0.0.1:0", coap.HTTPAddr(), dbURL, "ALLOWED_ORIGINS", appOrigin)
	// "localhost" makes the relay another origin than 127.0.0.1 (the app).
	relayURL := "http://localhost:" + strings.TrimPrefix(hostPort(t, relay.HTTPAddr()), "127.0.0.1:")
	html := fmt.Sprintf(embedderPage, relayURL, device, userToken(t, owner, time.Hour))
	app.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(html))
	})
	app.Start()
	t.Cleanup(app.Close)

	b.do("open the app", chromedp.Navigate(app.URL))
	b.waitFor("state live", `window.states && window.states.includes("live")`)
	sendUplink(t, coap, richUplink(device, 5))
	b.waitFor("entry #5", `window.entries.some((e) => e.type === "uplink" && e.data.uplink_count === 5)`)
	got := eval[string](b, `JSON.stringify([window.states[0], window.entries[0].deviceId, window.entries[0].message, window.entries[0].data.reboot.reason])`)
	if want := `["connecting","BROWSER-1","Received uplink #5","watchdog"]`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}

	// The module's pure helpers: where it connects and how long it waits.
	helpers := eval[string](b, `import("`+relayURL+`/static/livelogs.js").then((m) => JSON.stringify([
		m.relayURL("https://relay.example.com", "A").href,
		m.relayURL("wss://relay.example.com/base/device-logs?x=1", "B-2").href,
		m.relayURL("http://relay.example.com/base/", "C").href,
		m.backoffDelay(1, m.DEFAULT_BACKOFF, () => 0), m.backoffDelay(1, m.DEFAULT_BACKOFF, () => 1),
		m.backoffDelay(3, m.DEFAULT_BACKOFF, () => 0), m.backoffDelay(50, m.DEFAULT_BACKOFF, () => 0),
		m.backoffDelay(50, m.DEFAULT_BACKOFF, () => 1)]))`, chromedp.EvalAwaitPromise)
	wantHelpers := `["wss://relay.example.com/device-logs?deviceId=A",` +
		`"wss://relay.example.com/base/device-logs?deviceId=B-2",` +
		`"ws://relay.example.com/base/device-logs?deviceId=C",250,500,1000,15000,30000]`
	if helpers != wantHelpers {
		t.Errorf("helpers = %s\nwant      %s", helpers, wantHelpers)
	}
	b.checkConsole()
}
