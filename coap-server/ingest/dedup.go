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
// at least the message ID. Safe for concurrent use: while one copy is
// being processed (begin to end), another is reported busy and not
// processed, so two copies arriving at once from two addresses make one
// row and one entry.
//
// With the embedded NATS server, Dedup is the only memory of recent
// uplinks (the live log's entries carry their key but the server does not
// index it: its map of message IDs cost a third of the throughput): it is
// strict (NewStrictDedup), never forgetting an answer early, and restored
// at start from the live log's last EXCHANGE_LIFETIME (Restore), so that a
// copy reaching the process after a restart is recognised too. With
// NATS_URL the cluster's duplicate window backs it, and it may forget the
// oldest answers when full (counted).
//
// Entries live in a ring of fixed-size chunks in the order they were
// remembered, which is the order they expire in (the lifetime is
// constant): expiry and eviction take from the front, O(1) each, and no
// entry is ever moved.
type Dedup struct {
	mu       sync.Mutex
	ttl      time.Duration
	maxBytes int64
	strict   bool  // never drop an answer before it expires (NewStrictDedup)
	bytes    int64 // charged: dedupEntryBytes per entry, plus answers
	steps    int64 // entries touched, for tests: constant per call

	entries map[dedupKey]uint64 // key -> position in the ring
	chunks  []*[dedupChunk]dedupEntry
	spare   *[dedupChunk]dedupEntry // the last chunk emptied, reused
	first   uint64                  // position of chunks[0][0]
	head    uint64                  // oldest position still in the ring
	tail    uint64                  // next position to fill
	answers map[uint64][]byte       // non-empty answers, by position
	// working holds the keys being processed (begin to end): at most one
	// per worker.
	working map[dedupKey]struct{}
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
	restored  bool // from the live log at start: its answer is not known
}

// dedupHit is what lookup returns of a remembered answer.
type dedupHit struct {
	code   codes.Code
	answer []byte
	seq    uint64
	copies int
	// restored: the uplink was accepted before a restart (Restore); the
	// answer it got then is not known, so the handler answers it anew.
	restored bool
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
	return &Dedup{ttl: ttl, maxBytes: maxBytes, entries: make(map[dedupKey]uint64), answers: make(map[uint64][]byte),
		working: make(map[dedupKey]struct{})}
}

// NewStrictDedup is NewDedup that never drops an answer before it
// expires: when it holds maxBytes, Full reports it and the handler refuses
// new uplinks with 5.03 until answers expire. remember may take it past
// maxBytes by what the uplinks being processed at that moment add (one
// each per worker, 96 B plus a downlink's bytes).
func NewStrictDedup(maxBytes int64, ttl time.Duration) *Dedup {
	d := NewDedup(maxBytes, ttl)
	d.strict = true
	return d
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
	return d.lookupLocked(k, now)
}

func (d *Dedup) lookupLocked(k dedupKey, now time.Time) (dedupHit, bool) {
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
	h := dedupHit{code: e.code, seq: e.seq, copies: int(e.copies), restored: e.restored}
	if e.hasAnswer {
		h.answer = d.answers[p]
	}
	return h, true
}

// begin is lookup that, when k has no answer, claims it for the caller,
// who then remembers its answer (or not) and calls end: a copy that
// arrives meanwhile gets busy, and is not processed. One lock for both, so
// a copy sees either the claim or the answer.
func (d *Dedup) begin(k dedupKey, now time.Time) (h dedupHit, found, busy bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h, found = d.lookupLocked(k, now); found {
		return h, true, false
	}
	if _, busy = d.working[k]; busy {
		return dedupHit{}, false, true
	}
	d.working[k] = struct{}{}
	return dedupHit{}, false, false
}

// end releases the claim begin took on k.
func (d *Dedup) end(k dedupKey) {
	d.mu.Lock()
	delete(d.working, k)
	d.mu.Unlock()
}

// authReserveShare: an eighth of a strict Dedup is for authenticated
// uplinks (CoAPS) only. Plain CoAP carries no identity, so anyone can
// send valid uplinks at a high rate; such a flood fills the rest and gets
// 5.03 (dedup_full), and devices with keys are still answered.
const authReserveShare = 8

// Full reports whether a strict Dedup holds, in answers that have not
// expired (it drops a few expired ones first), its maxBytes, or for an
// uplink that is not authenticated all but the reserved eighth. A Dedup
// that is not strict is never full: it forgets its oldest answers instead.
func (d *Dedup) Full(now time.Time, authenticated bool) bool {
	if !d.strict {
		return false
	}
	limit := d.maxBytes
	if !authenticated {
		limit -= d.maxBytes / authReserveShare
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sweepLocked(now.UnixNano())
	return d.bytes+dedupEntryBytes > limit
}

// sweepLocked drops up to dedupSweep expired entries from the front.
func (d *Dedup) sweepLocked(t int64) {
	for range dedupSweep {
		e, ok := d.front()
		if !ok || t <= e.expires {
			break
		}
		d.steps++
		d.popFront()
	}
}

// Restore remembers an uplink accepted at at, before a restart, at
// position seq of the live log (stream.Engine.RecentKeys): a copy of it
// within ttl of at gets 2.04 and makes nothing twice. Its answer is not
// known (hit.restored). An expired or known key is skipped, and so is
// every key once a strict Dedup is full. Keys must come in the order they
// were accepted, the order entries expire in. It reports whether k was
// remembered.
func (d *Dedup) Restore(k [16]byte, seq uint64, at, now time.Time) bool {
	expires := at.Add(d.ttl)
	if !now.Before(expires) {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.entries[k]; ok {
		return false
	}
	if d.bytes+dedupEntryBytes > d.maxBytes {
		return false
	}
	p := d.push()
	*d.at(p) = dedupEntry{key: k, expires: expires.UnixNano(), seq: seq, copies: 1, code: codes.Changed, live: true, restored: true}
	d.entries[k] = p
	d.bytes += dedupEntryBytes
	return true
}

// remember stores the answer for k, dropping a few expired entries and,
// while over the byte bound and not strict, the oldest ones. Both take
// from the front: O(1) amortised, and at most dedupSweep expired entries
// per call.
func (d *Dedup) remember(k dedupKey, code codes.Code, answer []byte, seq uint64, now time.Time) (evicted bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.steps++
	t := now.UnixNano()
	d.sweepLocked(t)
	if p, ok := d.entries[k]; ok {
		d.kill(p)
	}
	size := entrySize(answer)
	for !d.strict && d.bytes+size > d.maxBytes && d.head < d.tail {
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

// setSeq records the position of k's live-log entry, learnt after its
// answer was remembered (Stream.LogBehind); a key no longer held is
// skipped.
func (d *Dedup) setSeq(k dedupKey, seq uint64) {
	d.mu.Lock()
	if p, ok := d.entries[k]; ok {
		d.at(p).seq = seq
	}
	d.mu.Unlock()
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

// MaxBytes is the bound Dedup was made with.
func (d *Dedup) MaxBytes() int64 { return d.maxBytes }

// Len is the number of remembered answers.
func (d *Dedup) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.entries)
}
