package ingest

import (
	"container/list"
	"hash/maphash"
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// ExchangeLifetime is how long a message ID may be reused for the same
// exchange (RFC 7252 §4.8.2, EXCHANGE_LIFETIME with default parameters).
const ExchangeLifetime = 247 * time.Second

// dedupEntryOverhead is what one remembered answer costs besides its
// device ID, token and answer bytes: the entry (144 B), its list element
// (48 B), its map slot (~72 B with the table's spare room) and the key's
// string headers; TestDedupBytesMatchTheHeap checks it against the heap.
const dedupEntryOverhead = 288

// dedupSweep is how many expired entries one remember drops at most: more
// than the one it adds, so the table keeps up, and a fixed bound, so no
// datagram pays for a burst that expired all at once.
const dedupSweep = 8

// Dedup remembers the answers to accepted uplinks per device, so that a
// retransmission is answered again without a second row or live-log entry
// even when it comes from another address. go-coap detects duplicates only
// per connection (RFC 7252 §4.5: per endpoint), and on NB-IoT a NAT
// rebinding between a CON and its retransmission makes a new endpoint.
// Keys are the device, message ID, token and a hash of the payload: a
// retransmission repeats all four, and a new uplink differs in at least the
// message ID. Safe for concurrent use; two copies arriving at the same
// instant from two addresses may both be processed (storage is idempotent
// per uplink_id, not per copy: the window is that small).
type Dedup struct {
	mu       sync.Mutex
	seed     maphash.Seed
	ttl      time.Duration
	maxBytes int64
	bytes    int64 // charged by entrySize
	steps    int64 // entries touched, for tests: constant per call
	entries  map[dedupKey]*list.Element
	order    *list.List // oldest first; values are *dedupEntry
}

type dedupKey struct {
	device string
	token  string
	mid    int32
	sum    uint64
}

type dedupEntry struct {
	key     dedupKey
	code    codes.Code
	answer  []byte
	seq     uint64 // the live-log position of the uplink's entry
	copies  int    // copies seen, the original included
	expires time.Time
}

// dedupHit is what lookup returns of a remembered answer.
type dedupHit struct {
	code   codes.Code
	answer []byte
	seq    uint64
	copies int
}

// NewDedup returns a Dedup keeping answers for ttl in up to maxBytes
// (defaults DefaultDedupBytes() and ExchangeLifetime when zero).
func NewDedup(maxBytes int64, ttl time.Duration) *Dedup {
	if maxBytes <= 0 {
		maxBytes = DefaultDedupBytes()
	}
	if ttl <= 0 {
		ttl = ExchangeLifetime
	}
	return &Dedup{seed: maphash.MakeSeed(), ttl: ttl, maxBytes: maxBytes,
		entries: make(map[dedupKey]*list.Element), order: list.New()}
}

// entrySize is the bytes an entry is charged.
func entrySize(k dedupKey, answer []byte) int64 {
	return dedupEntryOverhead + int64(len(k.device)+len(k.token)+len(answer))
}

func (d *Dedup) key(device string, mid int32, token, payload []byte) dedupKey {
	return dedupKey{device: device, token: string(token), mid: mid, sum: maphash.Bytes(d.seed, payload)}
}

// lookup returns the remembered answer for k, if any and not expired, and
// counts the copy.
func (d *Dedup) lookup(k dedupKey, now time.Time) (dedupHit, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.steps++
	el, ok := d.entries[k]
	if !ok {
		return dedupHit{}, false
	}
	e := el.Value.(*dedupEntry)
	if now.After(e.expires) {
		return dedupHit{}, false
	}
	e.copies++
	return dedupHit{code: e.code, answer: e.answer, seq: e.seq, copies: e.copies}, true
}

// remember stores the answer for k, dropping a few expired entries and,
// while over the byte bound, the oldest ones. Entries expire in insertion
// order (the lifetime is constant), so both drops take from the front:
// O(1) amortised, and at most dedupSweep expired entries per call.
func (d *Dedup) remember(k dedupKey, code codes.Code, answer []byte, seq uint64, now time.Time) (evicted bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.steps++
	for range dedupSweep {
		front := d.order.Front()
		if front == nil || !now.After(front.Value.(*dedupEntry).expires) {
			break
		}
		d.steps++
		d.drop(front)
	}
	if el, ok := d.entries[k]; ok {
		d.drop(el)
	}
	size := entrySize(k, answer)
	for d.bytes+size > d.maxBytes && d.order.Len() > 0 {
		front := d.order.Front()
		// An expired entry left over by the bounded sweep is not an early
		// eviction.
		evicted = evicted || !now.After(front.Value.(*dedupEntry).expires)
		d.steps++
		d.drop(front)
	}
	d.bytes += size
	d.entries[k] = d.order.PushBack(&dedupEntry{key: k, code: code, answer: answer, seq: seq, copies: 1, expires: now.Add(d.ttl)})
	return evicted
}

func (d *Dedup) drop(el *list.Element) {
	e := el.Value.(*dedupEntry)
	d.bytes -= entrySize(e.key, e.answer)
	delete(d.entries, e.key)
	d.order.Remove(el)
}

// Bytes is what the remembered answers are charged, at most the bound.
func (d *Dedup) Bytes() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bytes
}

// Len is the number of remembered answers.
func (d *Dedup) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.order.Len()
}
