package stream

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
// for wait for the next one.
type UplinkSource struct {
	cons      jetstream.Consumer
	malformed prometheus.Counter
	ledger    *ledger       // nil unless entries follow their answers
	gateWait  time.Duration // the most an acknowledgement waits for them

	mu     sync.Mutex
	rest   []storage.Delivery // fetched beyond a Fetch's max
	perMsg float64            // uplinks per message, recently
}

// UplinkSource binds the storage consumer. malformed counts messages that
// are not accepted uplinks (written by something else); they are
// terminated so they never block the stream.
func (e *Engine) UplinkSource(ctx context.Context, malformed prometheus.Counter) (*UplinkSource, error) {
	if e.uplinks == nil {
		return nil, errors.New("stream: opened without storage")
	}
	cons, err := e.storeUplink.Consumer(ctx, StorageConsumer)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", StorageConsumer, err)
	}
	return &UplinkSource{cons: cons, malformed: malformed, perMsg: 1, ledger: e.ledger, gateWait: min(gateAckTimeouts*e.cfg.AckTimeout, e.cfg.RedeliverAfter/2)}, nil
}

// Fetch implements storage.Source: at most limit deliveries.
func (s *UplinkSource) Fetch(ctx context.Context, limit int, wait time.Duration) ([]storage.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	ds := s.takeLocked(nil, limit)
	// Ask for about as many messages as hold the uplinks still wanted.
	msgs := int(float64(limit-len(ds))/s.perMsg + 0.5)
	s.mu.Unlock()
	if len(ds) == limit {
		return ds, nil
	}
	if len(ds) > 0 {
		wait = 0 // something to write already: take only what is there
	}
	batch, err := s.cons.Fetch(min(limit, msgs+1), jetstream.FetchMaxWait(max(wait, time.Millisecond)))
	if err != nil {
		return ds, err
	}
	var got []storage.Delivery
	n := 0
	for m := range batch.Messages() {
		n++
		got = s.deliveries(got, m)
	}
	s.mu.Lock()
	if n > 0 {
		s.perMsg = 0.8*s.perMsg + 0.2*float64(len(got))/float64(n)
		s.perMsg = math.Max(1, s.perMsg)
	}
	s.rest = append(s.rest, got...)
	ds = s.takeLocked(ds, limit)
	s.mu.Unlock()
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
		return ds, err
	}
	return ds, nil
}

// takeLocked moves up to limit-len(ds) of the held deliveries to ds.
func (s *UplinkSource) takeLocked(ds []storage.Delivery, limit int) []storage.Delivery {
	k := min(limit-len(ds), len(s.rest))
	ds = append(ds, s.rest[:k]...)
	s.rest = slices.Delete(s.rest, 0, k)
	return ds
}

// deliveries appends the uplinks of m to ds.
func (s *UplinkSource) deliveries(ds []storage.Delivery, m jetstream.Msg) []storage.Delivery {
	if m.Subject() != batchSubject {
		a, err := uplink.Unmarshal(m.Data())
		if err != nil {
			s.malformed.Inc()
			_ = m.Term()
			return ds
		}
		return append(ds, storage.Delivery{Accepted: a, Ack: m.Ack, InProgress: m.InProgress, Nak: m.Nak})
	}
	var recs []uplink.Accepted
	err := splitBatch(m.Data(), func(rec []byte) {
		if a, err := uplink.Unmarshal(rec); err == nil {
			recs = append(recs, a)
		} else {
			s.malformed.Inc() // that record only: the others are stored
		}
	})
	if err != nil || len(recs) == 0 {
		s.malformed.Inc()
		_ = m.Term()
		return ds
	}
	g := &sharedAck{m: m}
	if s.ledger != nil {
		if md, err := m.Metadata(); err == nil {
			g.ledger, g.seq, g.mark = s.ledger, md.Sequence.Stream, s.ledger.mark()
			g.deadline = time.Now().Add(s.gateWait)
		}
	}
	g.left.Store(int32(len(recs)))
	for _, a := range recs {
		ds = append(ds, storage.Delivery{Accepted: a, Ack: g.ack, InProgress: m.InProgress, Nak: g.nak})
	}
	return ds
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
// one uplink, or the up to 64 of a batch (batch.go).
func (s *UplinkSource) Pending(ctx context.Context) (uint64, error) {
	info, err := s.cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.NumPending + uint64(info.NumAckPending), nil
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
