package downlink

import (
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// A new row is announced as "queued" before an uplink can be answered with
// it: when the announcement is handed to the live log, the row is not held
// yet, so the queued entry always precedes the entries of the uplink that
// carries it (whose answer is built from the held row).
func TestQueuedEntryPrecedesTheRowBeingHeld(t *testing.T) {
	c := NewCache(1<<20, nil, NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	announced := 0
	c.live = func(e *livelog.Entry) {
		announced++
		// Put holds c.mu while it announces; this goroutine may look.
		if _, held := c.devices["dev-order"]; held {
			t.Error("the row was held (an uplink could take it) before its queued entry was handed to the live log")
		}
	}
	c.Put(Row{ID: 7, DeviceID: "dev-order", Config: []byte(`{"heartbeat_interval": 600}`)})
	if announced != 1 || !c.Holds("dev-order", 7) {
		t.Fatalf("announced %d times, held %v; want one announcement and the row held", announced, c.Holds("dev-order", 7))
	}
	c.Put(Row{ID: 7, DeviceID: "dev-order", Config: []byte(`{"heartbeat_interval": 600}`)})
	c.Put(Row{ID: 8, DeviceID: "dev-order", Config: []byte(`{"heartbeat_interval": 600}`), Sent: true})
	if announced != 1 {
		t.Fatalf("announced %d times; a repeated row and a row sent before are not announced", announced)
	}
}
