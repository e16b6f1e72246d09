package sim

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// maxFrame bounds one incoming frame; live-log frames are well under 2 KiB.
const maxFrame = 64 << 10

// subscriber reads coap-server's /ws and hands every frame to a matcher.
type subscriber struct {
	conn *websocket.Conn
	done chan struct{}

	mu  sync.Mutex
	err error // why reading stopped, if not because we closed it
}

// subscribe connects to url with the bearer token. It returns once the
// handshake has completed: coap-server registers a subscriber before it
// answers the upgrade, so every uplink sent afterwards produces a frame here.
func subscribe(ctx context.Context, url, token string, m *matcher) (*subscriber, error) {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	h := http.Header{"Authorization": {"Bearer " + token}}
	conn, resp, err := d.DialContext(ctx, url, h)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("ws: subscribe %s: %s: %w", url, resp.Status, err)
		}
		return nil, fmt.Errorf("ws: subscribe %s: %w", url, err)
	}
	conn.SetReadLimit(maxFrame)
	s := &subscriber{conn: conn, done: make(chan struct{})}
	go s.read(m)
	return s, nil
}

// read is the connection's only reader; gorilla answers pings from inside
// ReadMessage, which keeps coap-server's keepalive happy.
func (s *subscriber) read(m *matcher) {
	defer close(s.done)
	for {
		_, b, err := s.conn.ReadMessage()
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
		m.frame(b, time.Now())
	}
}

// Err is why the subscription ended early, or nil while it is up (or after
// we closed it).
func (s *subscriber) Err() error {
	select {
	case <-s.done:
	default:
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// close says goodbye (RFC 6455 §5.5.1), closes the socket and waits for the reader.
func (s *subscriber) close() {
	select {
	case <-s.done: // already gone: keep its error
		_ = s.conn.Close()
		return
	default:
	}
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "simulation done")
	_ = s.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	_ = s.conn.Close()
	<-s.done
	s.mu.Lock()
	s.err = nil
	s.mu.Unlock()
}
