package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/httpapi"
	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
)

// floodingHistory is a retained log in memory whose first Read lets more
// live entries go by than a subscriber's gate holds (an instance busy
// while the history is read): the server then reads what it missed from
// the log again.
type floodingHistory struct {
	hub   *hub.Hub
	flood int

	mu    sync.Mutex
	log   []uint64 // seqs of device D, 1..len
	reads int
}

func (f *floodingHistory) LivePosition(context.Context) (stream.Position, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return stream.Position{First: 1, Last: uint64(len(f.log))}, nil
}

func (f *floodingHistory) Lost(context.Context, string, uint64, stream.Position) (bool, error) {
	return false, nil
}

func (f *floodingHistory) TailStart(context.Context, string, int, uint64) (uint64, error) {
	return 1, nil
}

func (f *floodingHistory) Read(_ context.Context, cursors []stream.Cursor, upto uint64, fn stream.ReadFunc) error {
	f.mu.Lock()
	f.reads++
	if f.reads == 1 {
		for range f.flood {
			seq := uint64(len(f.log) + 1)
			f.log = append(f.log, seq)
			f.mu.Unlock()
			f.hub.Feed(seq, "D", entryJSON(seq))
			f.mu.Lock()
		}
	}
	log := append([]uint64(nil), f.log...)
	f.mu.Unlock()
	for _, seq := range log {
		if seq >= cursors[0].From && seq <= upto {
			if err := fn(seq, "D", entryJSON(seq)); err != nil {
				return err
			}
		}
	}
	return nil
}

func entryJSON(seq uint64) []byte {
	return fmt.Appendf(nil, `{"deviceId":"D","type":"uplink","message":"Received uplink #%d"}`, seq)
}

// TestSinceAfterGateOverflowRepeatsNothing: a subscriber resuming with
// since=5, while more live entries go by than its gate holds, gets 6, 7, …
// once each and in order: the server reads what the gate dropped from the
// log, from where the subscriber is, not from the start of the log (it
// read from position 1 when nothing had been sent yet, repeating 1–5).
func TestSinceAfterGateOverflowRepeatsNothing(t *testing.T) {
	const token = "t0123456789abcdef"
	reg := prometheus.NewRegistry()
	h := hub.New(hub.NewMetrics(reg))
	hist := &floodingHistory{hub: h, flood: 1100, log: []uint64{1, 2, 3, 4, 5}}
	api := &httpapi.Server{Hub: h, History: hist, Token: token, Gatherer: reg, Logger: slog.New(slog.DiscardHandler)}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?deviceId=D&since=5",
		http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for want := uint64(6); want <= uint64(5+hist.flood); want++ {
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for seq %d: %v", want, err)
		}
		var f struct{ Seq uint64 }
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		if f.Seq != want {
			t.Fatalf("got seq %d, want %d (since=5: each later entry once, in order)", f.Seq, want)
		}
	}
}
