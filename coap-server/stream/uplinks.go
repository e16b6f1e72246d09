package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
)

// UplinkSource is the storage consumer of UPLINKS, shared by every
// instance on the same NATS: each batch goes to one of them. It implements
// storage.Source.
//
// A message holds one uplink (the version before batching) or a batch of
// them (batch.go); its uplinks are delivered separately and the message is
// acknowledged when all of them are. Those beyond what one Fetch asked
// for wait for the next one (parked), marked in progress meanwhile.
//
// What one Fetch takes from the stream is bounded in bytes as well as in
// messages (fetchBudget), so a backlog of full batches costs about the
// uplinks asked for, not up to 64 times as many.
//
// A message this version cannot read (a subject it does not know, a
// record version or batch it cannot decode: what a newer coap-server
// writes on the same NATS during a rolling deploy) is never deleted
// unstored (on a work queue an acknowledgement or a termination deletes
// an uplink that was answered 2.04): it is moved to UPLINKS_UNREADABLE
// (aside.go), for a version that can read it, or, when that fails, handed
// back for later (unreadableDelay), for a newer instance sharing the
// consumer to store; counted either way.
type UplinkSource struct {
	cons      jetstream.Consumer
	malformed prometheus.Counter
	log       *slog.Logger
	ledger    *ledger       // nil unless entries follow their answers
	gateWait  time.Duration // the most an acknowledgement waits for them
	maxMsg    int           // the most one message takes on the wire: no fetch asks for less
	beat      time.Duration // how often parked messages are marked in progress

	// UPLINKS_UNREADABLE (aside.go): js publishes to it on the storage
	// connection; aside, its consumer, is looked up (and the stream made
	// again, ensureAside) when first polled, and again after a failure.
	js          jetstream.JetStream
	ackTimeout  time.Duration
	ensureAside func(context.Context) error
	asideMu     sync.Mutex // held by the one caller polling it
	aside       jetstream.Consumer
	nextAside   time.Time

	mu       sync.Mutex
	rest     []parked // fetched beyond a Fetch's max
	beating  bool     // a heartbeat of rest is scheduled
	perMsg   float64  // uplinks per message, recently: high unless seen lower
	lastLog  time.Time
	unlogged int // unreadable messages not logged since lastLog
}

// parked is one delivery held in rest, with its message to keep alive.
type parked struct {
	d storage.Delivery
	m jetstream.Msg
}

const (
	// fetchBytesPerUplink is the byte budget of one fetch per uplink
	// asked for: twice a large uplink (a WiFi scan of 44 access points is
	// 1 KiB), so a backlog of typical uplinks fills a Fetch while one of
	// large ones (MAX_UPLINK_BYTES allows 65,000) makes it smaller instead
	// of bigger. Decoded, an uplink takes about 5 times its bytes.
	fetchBytesPerUplink = 2 << 10
	// fetchRounds bounds the fetches of one Fetch.
	fetchRounds = 3
	// fetchAgainWait is the expiry of a fetch for what is there already
	// (rounds after the first, or with parked uplinks to write): the
	// server expires a request of 1-2 ms before it delivered anything
	// about half the time, with a backlog waiting.
	fetchAgainWait = 20 * time.Millisecond
	// fetchWireOverhead is what a delivered message adds to its payload
	// in the server's count of a fetch's bytes (subject, ack reply).
	fetchWireOverhead = 4 << 10
	// unreadableDelay is how long a message this version cannot read is
	// handed back for, times its deliveries, up to unreadableMaxDelay: a
	// newer instance sharing the consumer takes it within a few delays,
	// while with none (a rollback) it costs a fetch every 5 minutes.
	unreadableDelay    = 30 * time.Second
	unreadableMaxDelay = 5 * time.Minute
	// unreadableLogEvery bounds the warnings about them.
	unreadableLogEvery = time.Minute
)

// UplinkSource binds the storage consumer. malformed counts the deliveries
// of messages this version cannot read; they are handed back, never
// deleted (see UplinkSource), and counted again at each delivery, so the
// counter grows as long as one is in the stream.
func (e *Engine) UplinkSource(ctx context.Context, malformed prometheus.Counter) (*UplinkSource, error) {
	if e.uplinks == nil {
		return nil, errors.New("stream: opened without storage")
	}
	cons, err := e.storeUplink.Consumer(ctx, StorageConsumer)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", StorageConsumer, err)
	}
	// No message is larger than the server's max_payload; a fetch whose
	// byte budget is smaller than its next message gets nothing (the
	// server ends it with 409 Message Size Exceeds MaxBytes, which the
	// client does not report), so the budget is never below it.
	maxMsg := 1 << 20
	if p := e.store.MaxPayload(); p > 0 {
		maxMsg = int(p)
	}
	// No UPLINKS message is larger than the stream's own bound, which is
	// far below a max_payload an external server may raise (8 MiB made
	// the floor, and a fetch, eight times as large).
	if info := e.uplinks.CachedInfo(); info != nil && info.Config.MaxMsgSize > 0 {
		maxMsg = min(maxMsg, int(info.Config.MaxMsgSize))
	}
	beat := e.cfg.RedeliverAfter
	if info := cons.CachedInfo(); info != nil && info.Config.AckWait > 0 {
		beat = min(beat, info.Config.AckWait) // set by another instance
	}
	return &UplinkSource{
		js: e.storeJS, ackTimeout: e.cfg.AckTimeout, ensureAside: e.ensureAside,
		cons: cons, malformed: malformed, log: e.cfg.Logger, perMsg: maxBatchUplinks,
		ledger: e.ledger, gateWait: min(gateAckTimeouts*e.cfg.AckTimeout, e.cfg.RedeliverAfter/2),
		maxMsg: maxMsg + fetchWireOverhead, beat: max(beat/4, 10*time.Millisecond),
	}, nil
}

// fetchBudget is the most bytes one fetch for want uplinks takes.
func (s *UplinkSource) fetchBudget(want int) int {
	return max(want*fetchBytesPerUplink, s.maxMsg)
}

// Fetch implements storage.Source: at most limit deliveries. It takes at
// most fetchBudget(limit) bytes of messages from the stream, in up to
// fetchRounds fetches (another only while the last one was cut short by
// its count, so more are waiting: the estimate of uplinks per message was
// high); what they hold beyond limit is parked for the next call (of any
// worker), so rest holds at most one budget per concurrent caller.
func (s *UplinkSource) Fetch(ctx context.Context, limit int, wait time.Duration) ([]storage.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	ds := s.takeLocked(nil, limit)
	perMsg := s.perMsg
	s.mu.Unlock()
	want := limit - len(ds)
	if want <= 0 {
		return ds, nil
	}
	if len(ds) > 0 {
		wait = min(wait, fetchAgainWait) // something to write already: take only what is there
	}
	budget := s.fetchBudget(want)
	var got []parked
	var err error
	for round := 0; round < fetchRounds && len(got) < want && budget > 0; round++ {
		// About as many messages as hold the uplinks still wanted, rather
		// fewer than more: the estimate starts at a full batch.
		left := want - len(got)
		msgs := max(1, min(left, int(math.Ceil(float64(left)/perMsg))))
		var batch jetstream.MessageBatch
		batch, err = s.cons.Fetch(msgs, jetstream.FetchMaxBytes(budget), jetstream.FetchMaxWait(max(wait, time.Millisecond)))
		if err != nil {
			break
		}
		wait = fetchAgainWait
		k0, fetched, read := len(got), 0, 0
		for m := range batch.Messages() {
			fetched++
			budget -= wireSize(m)
			k := len(got)
			if got = s.deliveries(got, m); len(got) > k {
				read++
			}
		}
		if read > 0 {
			perMsg = float64(len(got)-k0) / float64(read) // for the next round
			s.mu.Lock()
			s.learnLocked(perMsg)
			s.mu.Unlock()
		}
		if err = batch.Error(); errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
			err = nil
		}
		if err != nil || fetched < msgs {
			break // no more waiting, or the budget is spent
		}
	}
	if err == nil && len(got) < want {
		got = s.fetchAside(got, want-len(got))
	}
	s.mu.Lock()
	s.rest = append(s.rest, got...)
	ds = s.takeLocked(ds, limit)
	if len(s.rest) > 0 && !s.beating {
		s.beating = true
		time.AfterFunc(s.beat, s.beatRest)
	}
	s.mu.Unlock()
	return ds, err
}

// wireSize is about what m counts against a fetch's byte budget.
func wireSize(m jetstream.Msg) int {
	n := len(m.Subject()) + len(m.Reply()) + len(m.Data())
	if h := m.Headers(); len(h) > 0 {
		n += len("NATS/1.0\r\n\r\n")
		for k, vs := range h {
			for _, v := range vs {
				n += len(k) + len(v) + len(": \r\n")
			}
		}
	}
	return n
}

// learnLocked updates the uplinks-per-message estimate with a fetch's
// average: up at once (asking for too many messages is what costs
// memory), down gradually.
func (s *UplinkSource) learnLocked(avg float64) {
	if avg >= s.perMsg {
		s.perMsg = avg
	} else {
		s.perMsg = max(1, 0.7*s.perMsg+0.3*avg)
	}
}

// takeLocked moves up to limit-len(ds) of the parked deliveries to ds.
func (s *UplinkSource) takeLocked(ds []storage.Delivery, limit int) []storage.Delivery {
	k := max(0, min(limit-len(ds), len(s.rest)))
	for _, p := range s.rest[:k] {
		ds = append(ds, p.d)
	}
	s.rest = slices.Delete(s.rest, 0, k)
	return ds
}

// beatRest marks the messages of the parked deliveries in progress, every
// beat while there are any: parked while both workers retry a write (the
// database down), they would otherwise pass the consumer's AckWait and be
// delivered again to another instance, and held twice.
func (s *UplinkSource) beatRest() {
	s.mu.Lock()
	var ms []jetstream.Msg
	for i, p := range s.rest {
		if i == 0 || p.m != s.rest[i-1].m { // a batch's deliveries are adjacent
			ms = append(ms, p.m)
		}
	}
	if len(ms) == 0 {
		s.beating = false
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	closed := false
	for _, m := range ms {
		if err := m.InProgress(); errors.Is(err, nats.ErrConnectionClosed) {
			closed = true // the engine is closed: the stream redelivers them
			break
		}
	}
	s.mu.Lock()
	if closed || len(s.rest) == 0 {
		s.beating = false
	} else {
		time.AfterFunc(s.beat, s.beatRest)
	}
	s.mu.Unlock()
}

// deliveries appends the uplinks of m to ds, or moves m aside or hands it
// back when this version cannot read all of it. A message of
// UPLINKS_UNREADABLE is read by the subject it had in UPLINKS.
func (s *UplinkSource) deliveries(ds []parked, m jetstream.Msg) []parked {
	subject := m.Subject()
	aside := subject == asideSubject
	if aside {
		subject = m.Headers().Get(SubjectHeader)
	}
	switch {
	case subject == batchSubject:
	case isDeviceSubject(subject): // one uplink, as before batching
		a, err := uplink.Unmarshal(m.Data())
		if err != nil {
			s.handBack(m, aside, "an uplink record it cannot read", err)
			return ds
		}
		return append(ds, parked{d: storage.Delivery{Accepted: a, Ack: m.Ack, InProgress: m.InProgress, Nak: m.Nak}, m: m})
	default:
		s.handBack(m, aside, "a subject it does not know", nil)
		return ds
	}
	var recs []uplink.Accepted
	var bad error
	err := splitBatch(m.Data(), func(rec []byte) {
		if bad != nil {
			return
		}
		a, err := uplink.Unmarshal(rec)
		if err != nil {
			bad = err
			return
		}
		recs = append(recs, a)
	})
	switch {
	case err != nil:
		s.handBack(m, aside, "a batch it cannot split", err)
		return ds
	case bad != nil:
		// All of it or none: the others are stored with it by an
		// instance that reads the whole message.
		s.handBack(m, aside, "a batch with an uplink record it cannot read", bad)
		return ds
	case len(recs) == 0:
		_ = m.Ack() // an empty batch: no uplink to store
		return ds
	}
	g := &sharedAck{m: m}
	// What was moved aside left UPLINKS long ago: its entries too.
	if s.ledger != nil && !aside {
		if md, err := m.Metadata(); err == nil {
			g.ledger, g.seq, g.mark = s.ledger, md.Sequence.Stream, s.ledger.mark()
			g.deadline = time.Now().Add(s.gateWait)
		}
	}
	g.left.Store(int32(len(recs)))
	for _, a := range recs {
		ds = append(ds, parked{d: storage.Delivery{Accepted: a, Ack: g.ack, InProgress: m.InProgress, Nak: g.nak}, m: m})
	}
	return ds
}

// isDeviceSubject reports whether subject is a device's, on which the
// version before batching published one uplink per message.
func isDeviceSubject(subject string) bool {
	dev, ok := strings.CutPrefix(subject, uplinkSubject)
	return ok && dev != "" && !strings.Contains(dev, ".")
}

// handBack moves a message of UPLINKS this version cannot read aside
// (moveAside), or, when that fails or it is aside already, returns it to
// its stream for later; it counts it, and logs it at most every
// unreadableLogEvery. It is never terminated: what reaches UPLINKS was
// written by a coap-server (no device publishes there), and one that
// cannot read it is older than the one that wrote it (or that one has a
// bug, which the metric, the log and the stream's size show, and a fixed
// version stores). The consumers have no MaxDeliver, so the server never
// drops it either; while it waits it counts in its consumer's ack pending
// (nbiot_storage_pending).
func (s *UplinkSource) handBack(m jetstream.Msg, aside bool, what string, err error) {
	s.malformed.Inc()
	var seq, delivered uint64
	if md, mdErr := m.Metadata(); mdErr == nil {
		seq, delivered = md.Sequence.Stream, md.NumDelivered
	}
	var moveErr error
	if !aside {
		if moveErr = s.moveAside(m); moveErr == nil {
			s.warnUnreadable(m, seq, delivered, what, err, "moved to "+AsideStream+" for a version that can read it", "stream", AsideStream)
			return
		}
	}
	delay := min(unreadableDelay*time.Duration(max(delivered, 1)), unreadableMaxDelay)
	nakErr := m.NakWithDelay(delay)
	attrs := []any{"retry_in", delay}
	if moveErr != nil {
		attrs = append(attrs, "move_err", moveErr)
	}
	if nakErr != nil {
		attrs = append(attrs, "nak_err", nakErr)
	}
	s.warnUnreadable(m, seq, delivered, what, err, "left in the stream for a newer instance", attrs...)
}

// warnUnreadable logs an unreadable message and what became of it, at
// most every unreadableLogEvery (the others are counted in the next).
func (s *UplinkSource) warnUnreadable(m jetstream.Msg, seq, delivered uint64, what string, err error, outcome string, more ...any) {
	s.mu.Lock()
	now := time.Now()
	if now.Sub(s.lastLog) < unreadableLogEvery {
		s.unlogged++
		s.mu.Unlock()
		return
	}
	others := s.unlogged
	s.lastLog, s.unlogged = now, 0
	s.mu.Unlock()
	attrs := append([]any{"subject", m.Subject(), "stream_seq", seq, "deliveries", delivered, "others_since_last_warning", others}, more...)
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	s.log.Warn("storage: an uplink-stream message this version cannot read ("+what+"), "+outcome, attrs...)
}

// sharedAck settles one batch message for its uplinks: acknowledged when
// every one was; handed back at once when any one is (the others are then
// written again, idempotently). With a ledger the acknowledgement first
// waits for the uplinks' live-log entries (ledger.go).
type sharedAck struct {
	m      jetstream.Msg
	left   atomic.Int32
	nacked atomic.Bool

	ledger    *ledger
	seq, mark uint64    // m's position; the ledger's mark when m came
	deadline  time.Time // the latest to wait until: a fetch's messages share one
}

// gateAckTimeouts: an acknowledgement waits for the entries of its
// uplinks at most this many AckTimeouts after its message was fetched (a
// group of them is resolved within one once sent, and a few may be queued
// before it), the messages of one fetch together, and at most half the
// time after which the stream hands a fetched message to another worker
// (RedeliverAfter, STORAGE_REDELIVERY).
const gateAckTimeouts = 5

func (g *sharedAck) ack() error {
	if g.left.Add(-1) != 0 || g.nacked.Load() {
		return nil
	}
	if g.ledger != nil {
		g.ledger.wait(g.seq, g.mark, max(time.Until(g.deadline), 0))
	}
	return g.m.Ack()
}

func (g *sharedAck) nak() error {
	g.left.Add(-1)
	if g.nacked.Swap(true) {
		return nil
	}
	return g.m.Nak()
}

// Pending is the number of messages waiting for the database: each holds
// one uplink, or the up to 64 of a batch (batch.go). It includes those
// this version cannot read, moved aside or handed back for a newer one
// (handBack).
func (s *UplinkSource) Pending(ctx context.Context) (uint64, error) {
	info, err := s.cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	n := info.NumPending + uint64(info.NumAckPending)
	if c, err := s.js.Consumer(ctx, AsideStream, AsideConsumer); err == nil && c.CachedInfo() != nil {
		ai := c.CachedInfo()
		n += ai.NumPending + uint64(ai.NumAckPending)
	}
	return n, nil
}

// UplinksHeld is the number of messages in UPLINKS (not yet stored; one
// uplink each, or a batch).
func (e *Engine) UplinksHeld(ctx context.Context) (uint64, error) {
	if e.uplinks == nil {
		return 0, nil
	}
	info, err := e.uplinks.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}
