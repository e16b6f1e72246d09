package ingest

import (
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/nbiot-live/nbiot-live/coap-server/stream"
)

// ExchangeLifetime is how long a message ID may be reused for the same
// exchange (RFC 7252 §4.8.2, EXCHANGE_LIFETIME with default parameters).
const ExchangeLifetime = 247 * time.Second

// dedupEntryBytes is what one remembered answer costs: its slot in the
// chunked ring (48 B) and in the map (a 16-byte key and an 8-byte
// position, ~48 B with the table's spare room). Neither holds a pointer,
// so the collector never scans them, however many there are: at 36,000
// uplinks/s a heap of pointer-holding entries grew by about 13 MB/s and
// its marking took up to an eighth of the CPU. A non-empty answer (a
// downlink) is kept beside, charged its length and dedupAnswerOverhead.
// TestDedupBytesMatchTheHeap checks both against the heap.
const (
	dedupEntryBytes     = 96
	dedupAnswerOverhead = 64
)

// dedupSweep is how many expired entries one remember drops at most: more
// than the one it adds, so the table keeps up, and a fixed bound, so no
// datagram pays for a burst that expired all at once.
const dedupSweep = 8

// dedupChunk is the number of entries in one chunk of the ring: 48 KiB.
const dedupChunk = 1024

// Dedup remembers the answers to accepted uplinks per device, so that a
// retransmission is answered again without a second row or live-log entry
// even when it comes from another address. go-coap detects duplicates only
// per connection (RFC 7252 §4.5: per endpoint), and on NB-IoT a NAT
// rebinding between a CON and its retransmission makes a new endpoint.
// The key is stream.MsgKey: a hash of the device, message ID, token and
// payload; a retransmission repeats all four, and a new uplink differs in
// at least the message ID. Safe for concurrent use; two copies arriving at
// the same instant from two addresses may both be processed (the database
// and the live log keep one by the same key).
//
// Entries live in a ring of fixed-size chunks in the order they were
// remembered, which is the order they expire in (the lifetime is
// constant): expiry and eviction take from the front, O(1) each, and no
// entry is ever moved.
type Dedup struct {
	mu       sync.Mutex
	ttl      time.Duration
	maxBytes int64
	bytes    int64 // charged: dedupEntryBytes per entry, plus answers
	steps    int64 // entries touched, for tests: constant per call

	entries map[dedupKey]uint64 // key -> position in the ring
	chunks  []*[dedupChunk]dedupEntry
	spare   *[dedupChunk]dedupEntry // the last chunk emptied, reused
	first   uint64                  // position of chunks[0][0]
	head    uint64                  // oldest position still in the ring
	tail    uint64                  // next position to fill
	answers map[uint64][]byte       // non-empty answers, by position
}

// dedupKey is stream.MsgKey of the uplink.
type dedupKey [16]byte

// dedupEntry holds no pointer (see dedupEntryBytes). A slot whose entry
// was replaced or evicted has live false.
type dedupEntry struct {
	key       dedupKey
	expires   int64 // UnixNano
	seq       uint64
	copies    uint32
	code      codes.Code
	live      bool
	hasAnswer bool
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
	return &Dedup{ttl: ttl, maxBytes: maxBytes, entries: make(map[dedupKey]uint64), answers: make(map[uint64][]byte)}
}

// entrySize is the bytes an entry is charged.
func entrySize(answer []byte) int64 {
	if len(answer) == 0 {
		return dedupEntryBytes
	}
	return dedupEntryBytes + dedupAnswerOverhead + int64(len(answer))
}

func (d *Dedup) key(device string, mid int32, token, payload []byte) dedupKey {
	return dedupKey(stream.MsgKey(device, mid, token, payload))
}

// at is the slot of position p, which lies in [first, tail).
func (d *Dedup) at(p uint64) *dedupEntry {
	i := p - d.first
	return &d.chunks[i/dedupChunk][i%dedupChunk]
}

// lookup returns the remembered answer for k, if any and not expired, and
// counts the copy.
func (d *Dedup) lookup(k dedupKey, now time.Time) (dedupHit, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.steps++
	p, ok := d.entries[k]
	if !ok {
		return dedupHit{}, false
	}
	e := d.at(p)
	if now.UnixNano() > e.expires {
		return dedupHit{}, false
	}
	e.copies++
	h := dedupHit{code: e.code, seq: e.seq, copies: int(e.copies)}
	if e.hasAnswer {
		h.answer = d.answers[p]
	}
	return h, true
}

// remember stores the answer for k, dropping a few expired entries and,
// while over the byte bound, the oldest ones. Both take from the front:
// O(1) amortised, and at most dedupSweep expired entries per call.
func (d *Dedup) remember(k dedupKey, code codes.Code, answer []byte, seq uint64, now time.Time) (evicted bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.steps++
	t := now.UnixNano()
	for range dedupSweep {
		e, ok := d.front()
		if !ok || t <= e.expires {
			break
		}
		d.steps++
		d.popFront()
	}
	if p, ok := d.entries[k]; ok {
		d.kill(p)
	}
	size := entrySize(answer)
	for d.bytes+size > d.maxBytes && d.head < d.tail {
		e, ok := d.front()
		if !ok {
			break
		}
		// An expired entry left over by the bounded sweep is not an early
		// eviction.
		evicted = evicted || t <= e.expires
		d.steps++
		d.popFront()
	}
	p := d.push()
	*d.at(p) = dedupEntry{key: k, expires: now.Add(d.ttl).UnixNano(), seq: seq, copies: 1, code: code, live: true, hasAnswer: len(answer) > 0}
	if len(answer) > 0 {
		d.answers[p] = answer
	}
	d.entries[k] = p
	d.bytes += size
	return evicted
}

// front returns the oldest live entry, first dropping the dead slots
// before it (entries replaced by a newer answer: their cost was returned
// when they died).
func (d *Dedup) front() (*dedupEntry, bool) {
	for d.head < d.tail {
		if e := d.at(d.head); e.live {
			return e, true
		}
		d.advance()
	}
	return nil, false
}

// popFront drops the oldest entry, which is live.
func (d *Dedup) popFront() {
	d.kill(d.head)
	d.advance()
}

// kill drops the live entry at p from the map and the count; its slot stays
// until the front passes it.
func (d *Dedup) kill(p uint64) {
	e := d.at(p)
	delete(d.entries, e.key)
	d.bytes -= dedupEntryBytes
	if e.hasAnswer {
		a := d.answers[p]
		d.bytes -= dedupAnswerOverhead + int64(len(a))
		delete(d.answers, p)
	}
	*e = dedupEntry{}
}

// advance moves the front past one slot, freeing a chunk it leaves.
func (d *Dedup) advance() {
	d.head++
	if d.head-d.first == dedupChunk {
		d.spare = d.chunks[0]
		d.chunks[0] = nil
		d.chunks = d.chunks[1:]
		d.first += dedupChunk
	}
}

// push returns the next position, adding a chunk when the last is full.
func (d *Dedup) push() uint64 {
	if d.tail-d.first == uint64(len(d.chunks))*dedupChunk {
		c := d.spare
		d.spare = nil
		if c == nil {
			c = new([dedupChunk]dedupEntry)
		}
		d.chunks = append(d.chunks, c)
	}
	d.tail++
	return d.tail - 1
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
	return len(d.entries)
}
