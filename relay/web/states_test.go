package web_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// emailToken is userToken with the email claim Supabase puts in its tokens.
func emailToken(t *testing.T, user uuid.UUID, email string) string {
	t.Helper()
	now := time.Now()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user.String(), "email": email, "role": "authenticated", "aud": "authenticated",
		"iat": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(),
	}).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// pageState is what the header and the body say at once.
type pageState struct {
	Conn, Auth, Empty string
	SignOut, SignIn   bool // buttons shown
	Picker            string
}

func readState(b *browser) pageState {
	return eval[pageState](b, `(() => { const $ = (id) => document.getElementById(id);
		return { Conn: $("conn-text").textContent, Auth: $("auth-text").textContent,
			Empty: $("empty").hidden ? "" : $("empty").textContent,
			SignOut: !$("signout").hidden, SignIn: !$("signin-show").hidden,
			Picker: $("picker").hidden ? "" : [...$("my-devices").options].filter(o => o.value).map(o => o.value).join(",") }; })()`)
}

// One truthful state: what the header says agrees with the body, for each
// way of not seeing a device, and "signed in" says as whom.
func TestPageShowsOneTruthfulState(t *testing.T) {
	b := newBrowser(t)
	dbURL, owner := seedDevice(t, device)
	stranger := seedStranger(t, dbURL)
	func() { // the stranger owns another device, which the owner must not see
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, `insert into public.devices (devid, owner_id, name, last_seen_at) values ('STRANGER-1', $1, 'not yours', now())`, stranger); err != nil {
			t.Fatal(err)
		}
	}()
	coap, _ := startCoAP(t, "127.0.0.1:0", "127.0.0.1:0")
	relay, _ := startRelay(t, "127.0.0.1:0", coap.HTTPAddr(), dbURL)
	base := "http://" + hostPort(t, relay.HTTPAddr())
	check := func(what string, got, want pageState) {
		t.Helper()
		if got != want {
			t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
		}
		if strings.Contains(got.Empty, "No entries yet") && want.Conn != "live" {
			t.Errorf("%s: the body promises entries while %q", what, got.Conn)
		}
	}

	// No device yet, no token.
	b.do("open the bare page", chromedp.Navigate(base+"/"))
	b.waitState("idle")
	check("no device", readState(b), pageState{Conn: "pick a device", Empty: "Pick a device above.", SignIn: true})

	// No token: sign in required, and nothing else.
	b.do("open signed out", chromedp.Navigate(base+"/?deviceId="+device))
	b.waitState("unauthorized")
	check("no token", readState(b), pageState{Conn: "sign in required", Empty: "Sign in to see this device's live log.", SignIn: true})

	// A refused (expired) token: not "signed in" in the header.
	b.do("open with an expired token", chromedp.Navigate(base+"/?deviceId="+device+"&access_token="+userToken(t, owner, -time.Hour)))
	b.waitState("unauthorized")
	check("refused token", readState(b), pageState{Conn: "sign in required", Empty: "Sign in to see this device's live log.", SignIn: true})
	t.Logf("screenshot: %s", b.screenshot("livelogs-state-refused.png"))

	// Someone else's device: signed in as them, no access, no promise.
	b.do("open as the stranger", chromedp.Navigate(base+"/?deviceId="+device+"&access_token="+userToken(t, stranger, time.Hour)))
	b.waitState("forbidden")
	b.waitFor("the stranger's picker", `!document.getElementById("picker").hidden`)
	check("no access", readState(b), pageState{Conn: "no access to this device", Auth: "signed in as " + stranger.String(),
		Empty: "You cannot see " + device + ": it is not one of your devices, or it does not exist.", SignOut: true, Picker: "STRANGER-1"})
	t.Logf("screenshot: %s", b.screenshot("livelogs-state-forbidden.png"))

	// An invalid device ID.
	b.do("open a bad ID", chromedp.Navigate(base+"/?deviceId=bad%20id!"))
	b.waitState("invalid")
	got := readState(b)
	check("invalid ID", got, pageState{Conn: "invalid device ID", Auth: got.Auth,
		Empty: "“bad id!” is not a device ID: letters, digits, _ and -, up to 64.", SignOut: true, Picker: got.Picker})

	// The owner, with an email in the token: signed in as the email, live,
	// the picker lists exactly their device and opens it.
	b.do("sign in as the owner", chromedp.Navigate(base+"/?access_token="+emailToken(t, owner, "owner@example.com")))
	b.waitState("idle")
	b.waitFor("the owner's picker", `!document.getElementById("picker").hidden`)
	check("owner, no device", readState(b), pageState{Conn: "pick a device", Auth: "signed in as owner@example.com",
		Empty: "Pick a device above.", SignOut: true, Picker: device})
	if opt := eval[string](b, `document.querySelector('#my-devices option[value="`+device+`"]').textContent`); !strings.HasPrefix(opt, device+" · browser test · ") {
		t.Errorf("picker option %q: want the ID, the name and when it was last seen", opt)
	}
	eval[bool](b, `(() => { const s = document.getElementById("my-devices"); s.value = "`+device+`";
		s.dispatchEvent(new Event("change")); return true; })()`)
	b.waitState("live")
	check("owner, live", readState(b), pageState{Conn: "live", Auth: "signed in as owner@example.com",
		Empty: "No entries yet. They appear here, newest first, as the device reports.", SignOut: true, Picker: device})
	sendUplink(t, coap, plainUplink(device, 1, 20))
	b.waitFor("uplink #1", `document.querySelector(`+jsString(rowSel(1))+`) !== null`)
	if st := readState(b); st.Empty != "" {
		t.Errorf("an entry is shown and the body still says %q", st.Empty)
	}
	// Typing an ID still works next to the picker.
	eval[bool](b, `document.getElementById("device").value = "STRANGER-1", true`)
	b.do("open the typed ID", chromedp.Click(chromedp.CSS(`#device-form button[type="submit"]`)))
	b.waitState("forbidden")
	t.Logf("screenshot: %s", b.screenshot("livelogs-state-owner.png"))
	b.checkConsole()
}
