package dtls

import (
	"testing"
	"time"

	"github.com/pion/transport/v5/deadline"
)

// A session admits MaxExchanges distinct message IDs within
// exchangeWindow; a retransmission of an admitted one always passes; an
// ID's slot frees once its window has passed.
func TestExchangesAdmit(t *testing.T) {
	var x exchanges
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano()
	for i := range MaxExchanges {
		if !x.admit(uint16(i), t0+int64(i)*int64(time.Second)) {
			t.Fatalf("message ID %d refused within the bound", i)
		}
	}
	later := t0 + int64(MaxExchanges)*int64(time.Second)
	if x.admit(MaxExchanges, later) {
		t.Fatal("one message ID past MaxExchanges admitted")
	}
	if !x.admit(3, later) {
		t.Fatal("a retransmission of an admitted message ID refused")
	}
	// The first ID's window ends: one new ID fits, the next does not.
	free := t0 + int64(exchangeWindow)
	if !x.admit(MaxExchanges, free) || x.admit(MaxExchanges+1, free) {
		t.Fatal("after the oldest expired: want exactly one new message ID admitted")
	}
	if x.admit(0, free) {
		t.Fatal("an expired message ID came back as a retransmission")
	}
}

// A peer's datagrams waiting to be read are bounded in bytes: past
// PeerQueueBytes they are dropped and counted, and reading one makes room.
// (The bound was 64 datagrams of up to 8 KiB: 512 KiB a peer.)
func TestPeerQueueBoundedInBytes(t *testing.T) {
	dropped := 0
	c := &peerConn{d: &demux{cfg: demuxConfig{dropped: func() { dropped++ }}}, in: make(chan datagram, peerQueue), closed: make(chan struct{})}
	c.readDeadline, c.writeDeadline = deadline.New(), deadline.New()
	big := make([]byte, PeerQueueBytes/2+1)
	c.deliver(big, nil)
	c.deliver(big, nil)
	if dropped != 1 || len(c.in) != 1 {
		t.Fatalf("after two datagrams of %d B: %d queued, %d dropped; want 1 and 1", len(big), len(c.in), dropped)
	}
	buf := make([]byte, demuxMTU)
	if n, _, err := c.ReadFrom(buf); err != nil || n != len(big) {
		t.Fatalf("read %d, %v", n, err)
	}
	c.deliver(big, nil)
	if dropped != 1 || len(c.in) != 1 {
		t.Fatalf("after a read: %d queued, %d dropped; want room for one more", len(c.in), dropped)
	}
}
