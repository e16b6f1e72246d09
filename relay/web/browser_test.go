package web_test

// The Live Logs page as a user sees it, in a real browser: chromium opens
// the page served by the relay, the relay verifies the token and checks the
// device in Postgres, a CoAP uplink goes through coap-server, and the entry
// must appear with the right values. Then coap-server restarts on the same
// ports (the page shows the relay's "lost"/"restored" status) and the relay
// restarts (the page reconnects on its own), and uplinks keep appearing.

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

const device = "BROWSER-1"

// entrySel selects the list item of uplink #n.
func entrySel(n int) string {
	return fmt.Sprintf(`li.entry[data-type="uplink"][data-uplink-count="%d"]`, n)
}

func TestLiveLogsPageFollowsDeviceThroughRestarts(t *testing.T) {
	b := newBrowser(t)
	dbURL, owner := seedDevice(t, device)
	coap, stopCoAP := startCoAP(t, "127.0.0.1:0", "127.0.0.1:0")
	coapUDP, coapHTTP := hostPort(t, coap.CoAPAddr()), hostPort(t, coap.HTTPAddr())
	relay, stopRelay := startRelay(t, "127.0.0.1:0", coap.HTTPAddr(), dbURL)
	relayAddr := hostPort(t, relay.HTTPAddr())
	token := userToken(t, owner, time.Hour)

	// Signed in by the link, as an existing app would open it. The page
	// first opened without the token gives the history length to expect:
	// one more entry, the token's replaced by the clean address.
	b.do("open the page signed out", chromedp.Navigate("http://"+relayAddr+"/?deviceId="+device))
	b.waitState("unauthorized")
	histBefore := eval[int](b, `history.length`)
	b.do("open the page", chromedp.Navigate("http://"+relayAddr+"/?deviceId="+device+"&access_token="+token))
	b.waitState("live")
	if href := eval[string](b, `location.href`); strings.Contains(href, "access_token") || strings.Contains(href, token) {
		t.Errorf("the token is still in the address bar: %s", href)
	}
	if got := eval[string](b, `new URLSearchParams(location.search).get("deviceId")`); got != device {
		t.Errorf("deviceId in the address bar = %q, want %q", got, device)
	}
	if hist := eval[int](b, `history.length`); hist != histBefore+1 {
		t.Errorf("history.length = %d, want %d: the token URL must be replaced, not pushed", hist, histBefore+1)
	}

	before := time.Now().UTC()
	sendUplink(t, coap, richUplink(device, 42))
	b.waitFor("uplink #42", `document.querySelector(`+jsString(entrySel(42))+`) !== null`)
	got := eval[map[string]string](b, `(() => {
		const li = document.querySelector(`+jsString(entrySel(42))+`);
		const f = (k) => li.querySelector(".f-" + k);
		return {
			type: li.querySelector(".type").textContent,
			message: li.querySelector(".message").textContent,
			time: li.querySelector("time").textContent,
			datetime: li.querySelector("time").dateTime,
			temperature: f("temperature").textContent,
			temperature_value: f("temperature").dataset.value,
			wifi: f("wifi_count").textContent,
			reboot: f("reboot").textContent,
			battery: f("battery_mv").textContent,
			gnss: f("gnss").textContent,
			config: f("config").textContent,
			activity: f("activity").dataset.value,
			segments: String(f("activity").querySelectorAll(".bar .seg").length),
			sleep_width: f("activity").querySelector(".seg.s-sleep").style.width,
		};
	})()`)
	want := map[string]string{
		"type":              "uplink",
		"message":           "Received uplink #42",
		"temperature":       "temp23.5 °C",
		"temperature_value": "23.5",
		"wifi":              "wifi3 APs",
		"reboot":            "rebootwatchdog (#3)",
		"battery":           "battery3.60 V",
		"gnss":              "gnss52.52000, 13.40500 ±8 m",
		"activity":          "sleep=3600,modem=45,gnss=120,wifi=30,other=60",
		"segments":          "5",
		"sleep_width":       fmt.Sprintf("%.2f%%", 3600.0/3855*100),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("uplink #42 %s = %q, want %q", k, got[k], v)
		}
	}
	for _, part := range []string{"heartbeat 1 h", "gnss off", "wifi scan 10 min", "fw 1.2.3", "hw revB", "v7"} {
		if !strings.Contains(got["config"], part) {
			t.Errorf("config %q lacks %q", got["config"], part)
		}
	}
	if !regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3}$`).MatchString(got["time"]) {
		t.Errorf("time %q: want HH:MM:SS.mmm", got["time"])
	}
	if ts, err := time.Parse(time.RFC3339Nano, got["datetime"]); err != nil || ts.Before(before.Truncate(time.Millisecond)) || ts.After(time.Now()) {
		t.Errorf("datetime %q: want the receipt time (%v)", got["datetime"], err)
	}

	// coap-server restarts on the same ports: the relay keeps the page
	// connected and says so with status entries.
	stopCoAP()
	b.waitState("upstream-lost")
	b.waitFor("a 'lost' status entry", `document.querySelector('li.entry.t-status .f-upstream[data-value="lost"]') !== null`)
	coap, _ = startCoAP(t, coapUDP, coapHTTP)
	b.waitFor("a 'restored' status entry", `document.querySelector('li.entry.t-status .f-upstream[data-value="restored"]') !== null`)
	b.waitState("live")
	sendUplink(t, coap, plainUplink(device, 43, 21.25))
	b.waitFor("uplink #43", `document.querySelector(`+jsString(entrySel(43))+`) !== null`)
	if first := eval[string](b, `document.querySelector("#entries > li").dataset.uplinkCount || ""`); first != "43" {
		t.Errorf("first entry is uplink %q, want 43 (newest first)", first)
	}
	if temp := eval[string](b, `document.querySelector(`+jsString(entrySel(43)+" .f-temperature .value")+`).textContent`); temp != "21.3 °C" {
		t.Errorf("uplink #43 temperature %q, want \"21.3 °C\"", temp)
	}

	// The relay restarts: the page itself reconnects with backoff, signed
	// in from sessionStorage (the token is no longer in the address).
	stopRelay()
	b.waitState("reconnecting")
	startRelay(t, relayAddr, coap.HTTPAddr(), dbURL)
	b.waitState("live")
	sendUplink(t, coap, plainUplink(device, 44, 20))
	b.waitFor("uplink #44", `document.querySelector(`+jsString(entrySel(44))+`) !== null`)
	order := eval[string](b, `[...document.querySelectorAll("#entries > li")].map(li => li.dataset.uplinkCount || li.dataset.type).join(",")`)
	if !regexp.MustCompile(`^44,(status,)*43,status,status,42$`).MatchString(order) {
		t.Errorf("entries (newest first) = %s", order)
	}
	path := b.screenshot("livelogs.png")
	t.Logf("screenshot: %s", path)
	b.checkConsole()
}

func TestLiveLogsPageSignIn(t *testing.T) {
	b := newBrowser(t)
	dbURL, owner := seedDevice(t, device)
	coap, _ := startCoAP(t, "127.0.0.1:0", "127.0.0.1:0")
	relay, _ := startRelay(t, "127.0.0.1:0", coap.HTTPAddr(), dbURL)
	page := "http://" + hostPort(t, relay.HTTPAddr()) + "/?deviceId=" + device

	signIn := func(token string) {
		t.Helper()
		b.do("paste a token", chromedp.WaitVisible(chromedp.CSS("#signin")), chromedp.SetValue(chromedp.CSS("#token"), token),
			chromedp.Click(chromedp.CSS(`#signin-form button[type="submit"]`)))
	}

	// No token: the relay answers 401 and the page asks to sign in.
	b.do("open the page", chromedp.Navigate(page))
	b.waitState("unauthorized")
	b.do("sign-in prompt", chromedp.WaitVisible(chromedp.CSS("#signin")))

	// An expired token is refused too, and the prompt says why.
	signIn(userToken(t, owner, -time.Minute))
	b.waitState("unauthorized")
	b.waitFor("the 'refused' prompt", `document.getElementById("signin-why").textContent.includes("refused the token")`)

	// Someone else's valid token: 403, the device is not theirs.
	stranger := seedStranger(t, dbURL)
	signIn(userToken(t, stranger, time.Hour))
	b.waitState("forbidden")

	// Sign out, then in as the owner: live, and an uplink shows.
	b.do("sign out", chromedp.Click(chromedp.CSS("#signout")))
	b.waitState("unauthorized")
	signIn(userToken(t, owner, time.Hour))
	b.waitState("live")
	if hidden := eval[bool](b, `document.getElementById("signin").hidden`); !hidden {
		t.Error("the sign-in prompt is still shown while live")
	}
	sendUplink(t, coap, plainUplink(device, 7, 19.5))
	b.waitFor("uplink #7", `document.querySelector(`+jsString(entrySel(7))+`) !== null`)

	// An invalid device ID is refused before any connection is tried.
	b.do("open a bad device ID", chromedp.Navigate(strings.Replace(page, device, "bad%20id!", 1)))
	b.waitState("invalid")
	b.checkConsole()
}
