package wspeer_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

func TestRegistryReserveBound(t *testing.T) {
	var r wspeer.Registry
	for i := range 3 {
		if !r.Reserve(3) {
			t.Fatalf("reservation %d of 3 refused", i+1)
		}
	}
	if r.Reserve(3) {
		t.Fatal("a fourth reservation of 3 was granted")
	}
	r.Release()
	if !r.Reserve(3) {
		t.Fatal("a released place was not given again")
	}
	for range 3 {
		r.Release()
	}
	r.CloseAll() // every place released: returns at once
	if r.Reserve(3) {
		t.Fatal("a reservation after CloseAll was granted")
	}
}

// CloseAll closes tracked peers, not untracked ones, and waits for every
// reservation, including one whose peer was never tracked.
func TestRegistryCloseAll(t *testing.T) {
	var r wspeer.Registry
	tracked, untracked := wspeer.New(wspeer.Config{}), wspeer.New(wspeer.Config{})
	for _, p := range []*wspeer.Peer{tracked, untracked} {
		if !r.Reserve(10) {
			t.Fatal("reservation refused")
		}
		r.Track(p)
	}
	r.Untrack(untracked)
	if !r.Reserve(10) {
		t.Fatal("reservation refused")
	}
	pending := make(chan struct{}) // the reservation without a peer, held until released
	go func() {
		<-tracked.Done()
		r.Release() // the tracked peer's handler
		r.Release() // the untracked peer's handler
		<-pending
		r.Release()
	}()
	closed := make(chan struct{})
	go func() {
		r.CloseAll()
		close(closed)
	}()
	if err := tracked.Reason(); !errors.Is(err, wspeer.ErrClosed) {
		t.Fatalf("tracked peer closed with %v, want ErrClosed", err)
	}
	select {
	case <-closed:
		t.Fatal("CloseAll returned while a reservation was held")
	case <-untracked.Done():
		t.Fatal("CloseAll closed an untracked peer")
	default:
	}
	close(pending)
	<-closed
	r.CloseAll() // idempotent

	late := wspeer.New(wspeer.Config{})
	r.Track(late)
	select {
	case <-late.Done():
	default:
		t.Fatal("a peer tracked after CloseAll was left open")
	}
	if !errors.Is(late.Reason(), wspeer.ErrClosed) {
		t.Fatalf("late peer closed with %v, want ErrClosed", late.Reason())
	}
}

// A client of a real connection sees 1001 (going away) when the server
// closes all, and CloseAll returns once its handler has.
func TestRegistryCloseAllGoingAway(t *testing.T) {
	var r wspeer.Registry
	upgrader := websocket.Upgrader{}
	running := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !r.Reserve(1) {
			http.Error(w, "too many", http.StatusServiceUnavailable)
			return
		}
		defer r.Release()
		conn, err := upgrader.Upgrade(w, req, nil)
		if err != nil {
			return
		}
		p := wspeer.New(wspeer.Config{})
		r.Track(p)
		close(running)
		p.Run(conn)
		r.Untrack(p)
	}))
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	c, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-running
	if _, resp, err := websocket.DefaultDialer.Dial(url, nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second connection of 1: err %v, want HTTP 503", err)
	}
	r.CloseAll()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Fatalf("client read %v, want close 1001", err)
	}
}
