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

func (c *countSender) Send(*websocket.PreparedMessage) bool { c.n++; return true }

// FuzzForward feeds arbitrary upstream frames to a link: it must never
// panic, and a frame reaches the watcher only when it is a JSON entry of
// the watched device (with a seq that is a non-negative integer, if any).
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
		if text && err == nil && id == "DEV" && json.Unmarshal(b, &withSeq) == nil {
			want = 1
		}
		if s.n != want {
			t.Fatalf("delivered %d, want %d for %q", s.n, want, b)
		}
	})
}
