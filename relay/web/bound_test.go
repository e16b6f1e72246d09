package web_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"
	"google.golang.org/protobuf/proto"
)

// The page keeps the newest 500 entries: a device that reports for hours
// must not grow the tab's memory without end.
func TestLiveLogsPageKeepsTheNewest500(t *testing.T) {
	const total, batch, limit = 520, 40, 500
	b := newBrowser(t)
	dbURL, owner := seedDevice(t, device)
	coap, _ := startCoAP(t, "127.0.0.1:0", "127.0.0.1:0")
	relay, _ := startRelay(t, "127.0.0.1:0", coap.HTTPAddr(), dbURL)
	b.do("open the page", chromedp.Navigate("http://"+hostPort(t, relay.HTTPAddr())+"/?deviceId="+device+"&access_token="+userToken(t, owner, time.Hour)))
	b.waitState("live")

	cc, err := udp.Dial(coap.CoAPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// In batches, each waited for on the page, so that no queue on the way
	// (coap-server's and the relay's 256 frames per connection) overflows.
	for n := 1; n <= total; n++ {
		payload, err := proto.Marshal(plainUplink(device, uint32(n), 20))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := cc.Post(ctx, "/uplink", message.AppOctets, bytes.NewReader(payload))
		cancel()
		if err != nil || resp.Code() != codes.Changed {
			t.Fatalf("uplink %d: %v %v", n, resp, err)
		}
		if n%batch == 0 || n == total {
			b.waitFor(fmt.Sprintf("uplink #%d", n), `document.querySelector(`+jsString(entrySel(n))+`) !== null`)
		}
	}
	got := eval[string](b, `JSON.stringify([
		document.querySelectorAll("#entries > li").length,
		document.querySelector("#entries > li:first-child").dataset.uplinkCount,
		document.querySelector("#entries > li:last-child").dataset.uplinkCount,
		document.getElementById("count").textContent])`)
	want := fmt.Sprintf(`[%d,"%d","%d","%d entries (last %d of %d)"]`, limit, total, total-limit+1, limit, limit, total)
	if got != want {
		t.Errorf("list = %s, want %s", got, want)
	}
	b.checkConsole()
}
