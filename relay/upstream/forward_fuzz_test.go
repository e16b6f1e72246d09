package upstream

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

type countSender struct{ n int }

func (c *countSender) Send(*websocket.PreparedMessage, int) bool            { c.n++; return true }
func (c *countSender) TrySend(pm *websocket.PreparedMessage, cost int) bool { return c.Send(pm, cost) }

// FuzzForward feeds arbitrary upstream frames to a link: it must never
// panic, and a frame reaches the watcher only when it is a JSON entry of
// the watched device (with a seq that is a non-negative integer, if any),
// and not coap-server's position status (the link keeps that).
func FuzzForward(f *testing.F) {
	f.Add([]byte(`{"deviceId":"DEV","timestamp":"2026-11-27T12:00:00.000Z","type":"uplink","message":"Received uplink #1","data":{"uplink_count":1,"temperature":null,"activity":null,"wifi_count":0,"reboot":null}}`), true)
	f.Add([]byte(`{"deviceId":"OTHER","type":"uplink"}`), true)
	f.Add([]byte(`{"deviceId":"DEV","deviceId":"OTHER"}`), true)
	f.Add([]byte(`{"deviceId":"DE\u0056"}`), true)
	f.Add([]byte(`[]`), true)
	f.Add([]byte{0xff, 0x00}, false)
	f.Add([]byte(`{"seq":7,"deviceId":"DEV","type":"uplink"}`), true)
	f.Add([]byte(`{"seq":-1,"deviceId":"DEV"}`), true)
	f.Add([]byte(`{"seq":"7","deviceId":"DEV"}`), true)
	f.Add([]byte(`{"deviceId":"DEV","type":"status","data":{"recovered":false}}`), true)
	f.Add([]byte(`{"deviceId":"DEV","type":"status","message":"History sent: live from here","data":{"position":12}}`), true)
	f.Add([]byte(`{"deviceId":"DEV","type":"status","data":{"position":-1}}`), true)
	f.Add([]byte(`{"seq":null,"deviceId":"DEV","type":"status","data":{"position":3}}`), true)
	f.Fuzz(func(t *testing.T, b []byte, text bool) {
		m := &Manager{cfg: Config{Metrics: NewMetrics(prometheus.NewRegistry())}.withDefaults(), ctx: context.Background()}
		l := newLink(m, "DEV", LiveOnly)
		s := &countSender{}
		l.add(&Watch{link: l, sender: s})
		typ := websocket.BinaryMessage
		if text {
			typ = websocket.TextMessage
		}
		l.forward(typ, b)
		id, err := livelog.PeekDeviceID(b)
		var withSeq struct {
			Seq *uint64 `json:"seq"`
		}
		want := 0
		if text && err == nil && id == "DEV" && json.Unmarshal(b, &withSeq) == nil && !isPosition(b) {
			want = 1
		}
		if s.n != want {
			t.Fatalf("delivered %d, want %d for %q", s.n, want, b)
		}
	})
}

// isPosition reports whether b is coap-server's position status: no seq,
// type "status", data with a position that is a non-negative integer and
// no recovered:false.
func isPosition(b []byte) bool {
	var f struct {
		Seq  *uint64         `json:"seq"` // null is no seq
		Type json.RawMessage `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(b, &f) != nil || f.Seq != nil {
		return false
	}
	var typ string
	if json.Unmarshal(f.Type, &typ) != nil || typ != "status" {
		return false
	}
	var d struct {
		Recovered *bool   `json:"recovered"`
		Position  *uint64 `json:"position"`
	}
	return json.Unmarshal(f.Data, &d) == nil && d.Position != nil && (d.Recovered == nil || *d.Recovered)
}
