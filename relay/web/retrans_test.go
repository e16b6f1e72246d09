package web_test

import (
	"net"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/protobuf/proto"
)

// A CoAP retransmission from a new source port (a NAT rebinding) is
// answered the same by coap-server and reported once: the page marks the
// uplink it repeats instead of adding a row.
func TestPageMarksARealRetransmission(t *testing.T) {
	b := newBrowser(t)
	dbURL, owner := seedDevice(t, device)
	coap, _ := startCoAP(t, "127.0.0.1:0", "127.0.0.1:0")
	relay, _ := startRelay(t, "127.0.0.1:0", coap.HTTPAddr(), dbURL)
	b.do("open the page", chromedp.Navigate("http://"+hostPort(t, relay.HTTPAddr())+"/?deviceId="+device+"&access_token="+userToken(t, owner, time.Hour)))
	b.waitState("live")

	payload, err := proto.Marshal(plainUplink(device, 1, 20))
	if err != nil {
		t.Fatal(err)
	}
	// CON POST /uplink, MID 0x1234, token 0xAB, Content-Format 42: the same
	// bytes from two sockets, as a device behind a NAT that rebinds.
	dgram := append([]byte{0x41, 0x02, 0x12, 0x34, 0xAB, 0xB6}, "uplink"...)
	dgram = append(append(dgram, 0x11, 42, 0xFF), payload...)
	for i := range 2 {
		u, err := net.Dial("udp", coap.CoAPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := u.Write(dgram); err != nil {
			t.Fatal(err)
		}
		_ = u.SetReadDeadline(time.Now().Add(5 * time.Second))
		ack := make([]byte, 1500)
		if n, err := u.Read(ack); err != nil || n < 4 || ack[1] != 0x44 {
			t.Fatalf("copy %d: answer %x %v, want 2.04", i+1, ack[:max(n, 0)], err)
		}
		_ = u.Close()
		if i == 0 {
			b.waitFor("uplink #1", `document.querySelector(`+jsString(rowSel(1))+`) !== null`)
		}
	}
	b.waitFor("the retransmission mark", `document.querySelector(`+jsString(rowSel(1))+`).dataset.retransmissions === "2"`)
	sendUplink(t, coap, plainUplink(device, 2, 20))
	b.waitFor("uplink #2", `document.querySelector(`+jsString(rowSel(2))+`) !== null`)
	if got := shownCounts(b); got != "2,1" {
		t.Errorf("rows = %s, want 2,1 (the retransmission marks #1, no row of its own)", got)
	}
	t.Logf("screenshot: %s", b.screenshot("livelogs-retransmission.png"))
	b.checkConsole()
}
