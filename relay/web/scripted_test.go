package web_test

// A scripted relay for the page's client-side tests: the real page
// (web.Handler) and a real WebSocket at /device-logs whose frames the test
// writes itself, so positions (seq), gaps, retransmissions, downlink states
// and clock skew can be produced exactly, and every connection's since/tail
// is recorded. The whole-stack tests (browser_test.go, stack_test.go) drive
// the real relay and coap-server.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/relay/web"
)

type scriptedRelay struct {
	t   testing.TB
	srv *httptest.Server

	mu      sync.Mutex
	queries []url.Values     // every /device-logs connection's query, in order
	conn    *websocket.Conn  // the newest connection
	conns   chan struct{}    // a value per new connection
	devices []map[string]any // GET /devices answer
}

func newScriptedRelay(t testing.TB) *scriptedRelay {
	t.Helper()
	s := &scriptedRelay{t: t, conns: make(chan struct{}, 100)}
	up := websocket.Upgrader{Subprotocols: []string{"nbiot-live"}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /device-logs", func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			http.Error(w, "not a WebSocket", http.StatusBadRequest) // livelogs.js's refusal probe
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		s.mu.Lock()
		s.queries = append(s.queries, r.URL.Query())
		s.conn = c
		s.mu.Unlock()
		s.conns <- struct{}{}
		for { // read until the page goes away (pings, close)
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("GET /devices", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.devices)
	})
	mux.Handle("/", web.Handler())
	s.srv = httptest.NewServer(mux)
	t.Cleanup(s.srv.Close)
	return s
}

// waitConn waits for connection number n (1-based) and returns its query.
func (s *scriptedRelay) waitConn(n int) url.Values {
	s.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		s.mu.Lock()
		if len(s.queries) >= n {
			q := s.queries[n-1]
			s.mu.Unlock()
			return q
		}
		s.mu.Unlock()
		select {
		case <-s.conns:
		case <-deadline:
			s.t.Fatalf("no connection #%d to the scripted relay", n)
		}
	}
}

// send writes entries to the newest connection, each as one text frame.
func (s *scriptedRelay) send(entries ...map[string]any) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range entries {
		b, err := json.Marshal(e)
		if err != nil {
			s.t.Fatal(err)
		}
		if err := s.conn.WriteMessage(websocket.TextMessage, b); err != nil {
			s.t.Fatalf("write: %v", err)
		}
	}
}

// drop closes the newest connection as a network failure would.
func (s *scriptedRelay) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.conn.Close()
}

// closeWith ends the newest connection with a close frame (code, text),
// as the relay does when a token expires (4401).
func (s *scriptedRelay) closeWith(code int, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
	_ = s.conn.Close()
}

func (s *scriptedRelay) page(deviceID string) string {
	return s.srv.URL + "/?deviceId=" + deviceID
}

// ts is a receipt time offset from now, as coap-server writes it.
func ts(offset time.Duration) string {
	return time.Now().Add(offset).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// uplinkEntry is an uplink entry at position seq with counter count.
func uplinkEntry(dev string, seq, count int) map[string]any {
	return map[string]any{
		"seq": seq, "deviceId": dev, "timestamp": ts(0), "type": "uplink",
		"message": fmt.Sprintf("Received uplink #%d", count),
		"data": map[string]any{"uplink_count": count, "temperature": 20.5,
			"activity":   map[string]any{"sleep": 1700, "modem": 30, "gnss": 0, "wifi": 0, "other": 70},
			"wifi_count": 0, "reboot": nil},
	}
}

// shownCounts is the uplink counters in the list, top (newest) first.
func shownCounts(b *browser) string {
	return eval[string](b, `[...document.querySelectorAll("#entries > li.entry")].map(li => li.dataset.uplinkCount || li.dataset.type).join(",")`)
}

// rowSel selects the row of uplink #n (entrySel's twin, kept here so that
// these tests build without the whole stack).
func rowSel(n int) string {
	return fmt.Sprintf(`li.entry[data-type="uplink"][data-uplink-count="%d"]`, n)
}
