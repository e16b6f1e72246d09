package dtls

import "github.com/nbiot-live/nbiot-live/internal/memlimit"

const (
	// sessionBase is what one established session costs idle, measured:
	// 47 KiB (48128 bytes) of heap (pion's conn, go-coap's client, buffers).
	sessionBase = 47 << 10
	// SessionBytes is what a session may hold at most: sessionBase, its
	// queue of datagrams not yet read (PeerQueueBytes) and go-coap's cache
	// of its answers, at most MaxExchanges of them (cachedAnswerBytes
	// each, a 2.04 with a small downlink; a bare 2.04 measured 181 B).
	// 67 KiB (68608 bytes).
	SessionBytes = sessionBase + PeerQueueBytes + MaxExchanges*cachedAnswerBytes
	// cachedAnswerBytes is what one cached answer is charged.
	cachedAnswerBytes = 384
	// A peer before it echoes its cookie costs nothing held: the
	// HelloVerifyRequest is stateless (cookie.go), measured at 0 bytes a
	// spoofed hello within noise (BenchmarkSpoofedHelloMemory; it was
	// 43 KiB when pion kept a conn per hello). Admitted handshakes are
	// bounded by LimitConfig.InFlight and become sessions.

	// ReferenceMemory is memlimit.Reference, the 512 MB machine of
	// fly.toml.
	ReferenceMemory = memlimit.Reference
	// sessionShare is the part of memory sessions may take; the rest is for
	// the stream, the hub, handshakes and GC headroom.
	sessionShare = 2
)

// MemoryLimit is the memory the process may use, in bytes, and where that
// figure came from (memlimit.Process).
func MemoryLimit() (int64, string) { return memlimit.Process() }

// SessionsFor is how many sessions fit in half of limit bytes: 3912 for
// the 512 MiB reference machine.
func SessionsFor(limit int64) int {
	return int(max(limit/sessionShare/SessionBytes, 1))
}
