package stream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
)

// Uplinks are made durable in batches (group commit): while a publish to
// UPLINKS waits for its acknowledgement, the uplinks of other callers
// collect in the next batch, which goes out as one message when a publish
// slot frees. An uplink never waits for a timer: at low load each one is
// published alone at once; under load a JetStream message, its
// acknowledgement, its delivery to storage and its deletion are shared by
// many (BenchmarkDurableUplink).
//
// A batch has no per-uplink Nats-Msg-Id, so the stream does not recognise
// a retransmission that reached another instance, or this one after a
// restart; the live log still does with NATS_URL (its entry's ID), or
// coap-server's own table embedded (its entry's KeyHeader, RecentKeys),
// and the database keeps one copy by the uplink's Key (uplink.Accepted).
const (
	// batchSubject is the subject of batch messages: two tokens after the
	// prefix, so it never equals a device's (one token) of the version
	// before batching, whose messages the consumer still reads.
	batchSubject = uplinkSubject + "batch.v1"
	// batchInflight is how many batch publishes may wait for their
	// acknowledgement at once: one being answered while the next collects
	// would serialise the two; a few keep the pipe full.
	batchInflight = 2
	// maxBatchUplinks and maxBatchBytes bound one batch message, so a
	// storage fetch gets about the uplinks it asked for and a message stays
	// far below NATS's 1 MiB max_payload.
	maxBatchUplinks = 64
	maxBatchBytes   = 64 << 10
)

// batcher collects the records of concurrent PublishUplink calls.
type batcher struct {
	e *Engine

	mu       sync.Mutex
	open     *batch // collecting; nil when none
	inflight int
}

// batch is one message's worth of records and the outcome they share.
type batch struct {
	data   []byte
	n      int
	keys   [][16]byte    // the uplinks' keys, with the ledger; zero: given up on
	ticket uint64        // the ledger's
	done   chan struct{} // closed when err is set (under batcher.mu)
	err    error
}

// appendRecord appends one length-prefixed record to a batch message.
func appendRecord(dst, rec []byte) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(rec))), rec...)
}

// errBatch is returned by splitBatch for a message that is not a sequence
// of length-prefixed records.
var errBatch = errors.New("stream: malformed uplink batch")

// splitBatch calls fn for each record of a batch message, in order.
func splitBatch(b []byte, fn func(rec []byte)) error {
	for len(b) > 0 {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return errBatch
		}
		fn(b[w : w+int(n)])
		b = b[w+int(n):]
	}
	return nil
}

// add puts rec in the batch being collected and returns once that batch
// was acknowledged, failed, or ctx ended. A record given up on (ctx, or no
// acknowledgement within AckTimeout) may still be stored: the device got
// 5.03, so its next try is a new request, and both are stored (README,
// Durability).
func (b *batcher) add(ctx context.Context, rec []byte, key [16]byte) error {
	b.mu.Lock()
	if b.open != nil && (b.open.n >= maxBatchUplinks || len(b.open.data)+len(rec)+binary.MaxVarintLen32 > maxBatchBytes) {
		b.startLocked() // full: out now, whatever is in flight
	}
	if b.open == nil {
		b.open = &batch{data: make([]byte, 0, min(maxBatchBytes, 8*(len(rec)+2))), done: make(chan struct{})}
	}
	bt := b.open
	bt.data = appendRecord(bt.data, rec)
	bt.n++
	i := len(bt.keys)
	if b.e.ledger != nil {
		bt.keys = append(bt.keys, key)
	}
	if b.inflight < batchInflight {
		b.startLocked()
	}
	b.mu.Unlock()
	select {
	case <-bt.done:
		return bt.err
	case <-ctx.Done():
		if b.e.ledger != nil {
			b.giveUp(bt, i)
		}
		return fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
}

// giveUp records that the caller of record i of bt stopped waiting: the
// uplink got 5.03 and will have no entry, so the ledger must not wait for
// it, whether bt turns out stored or not.
func (b *batcher) giveUp(bt *batch, i int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-bt.done: // resolved in between: the ledger owes it if stored
		if bt.err == nil {
			b.e.ledger.settleKey(bt.keys[i])
		}
	default:
		bt.keys[i] = [16]byte{}
	}
}

// startLocked publishes the open batch; b.mu is held.
func (b *batcher) startLocked() {
	bt := b.open
	b.open = nil
	b.inflight++
	if b.e.ledger != nil {
		bt.ticket = b.e.ledger.start()
	}
	go b.publish(bt)
}

func (b *batcher) publish(bt *batch) {
	// Not the caller's context: the batch is shared, and publish bounds
	// its wait by AckTimeout.
	ack, err := b.e.publish(context.Background(), &nats.Msg{Subject: batchSubject, Data: bt.data})
	b.mu.Lock()
	if l := b.e.ledger; l != nil {
		// Before its callers wake: each one's entry is owed from now on.
		var seq uint64
		if err == nil {
			seq = ack.Sequence
		}
		l.published(bt.ticket, seq, bt.keys)
	}
	bt.err = err
	close(bt.done)
	b.inflight--
	if b.open != nil && b.inflight < batchInflight {
		b.startLocked()
	}
	b.mu.Unlock()
}
