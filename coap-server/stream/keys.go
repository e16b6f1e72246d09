package stream

import (
	"context"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// keysBuffer is how many headers-only messages RecentKeys lets the client
// buffer: what it holds at a time, whatever the stream's size.
const keysBuffer = 1024

// RecentKeys is how the process, after a restart, learns the uplinks it
// answered in the last EXCHANGE_LIFETIME, so that a device's copy of one
// of them gets the same answer, not a second entry: it calls fn with the
// key (KeyHeader), position and time of every live-log entry stored at or
// after since, in position order, and returns how many it passed.
// Entries without a key are skipped (errors, downlink events); those of
// the version before carry it as their Nats-Msg-Id ("l" and IDOf the key)
// and are read too, so that a copy straddling the upgrade is recognised.
//
// It reads only what the stream held when it was called, without the
// payloads, one buffer at a time, and then returns. With NATS_URL it
// reads nothing and returns 0: the cluster's Duplicates window recognises
// copies there (see Log).
func (e *Engine) RecentKeys(ctx context.Context, since time.Time, fn func(key [16]byte, seq uint64, at time.Time)) (int, error) {
	if e.cfg.URL != "" {
		return 0, nil
	}
	info, err := e.feedLive.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("live-log keys: stream info: %w", err)
	}
	st := info.State
	if st.Msgs == 0 || st.LastTime.Before(since) {
		return 0, nil
	}
	cons, err := e.feedLive.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{liveSubject + ">"},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &since,
		HeadersOnly:    true,
	})
	if err != nil {
		return 0, fmt.Errorf("live-log keys: consumer: %w", err)
	}
	defer e.deleteLiveConsumer(cons)
	it, err := cons.Messages(jetstream.PullMaxMessages(keysBuffer))
	if err != nil {
		return 0, fmt.Errorf("live-log keys: consumer: %w", err)
	}
	defer it.Stop()
	// Next takes a context or a wait, not both: the context stops the
	// iterator instead.
	defer context.AfterFunc(ctx, it.Stop)()
	return e.readKeys(ctx, it, st.LastSeq, fn)
}

// readKeys passes the keys of the messages it yields to fn up to the
// stream's last position at the start, or until nothing is pending behind
// a message (the stream dropped the rest). A wait longer than
// ConnectTimeout for the next one is an error, not the end: the in-process
// server has them at hand.
func (e *Engine) readKeys(ctx context.Context, it jetstream.MessagesContext, last uint64, fn func([16]byte, uint64, time.Time)) (int, error) {
	n := 0
	for {
		m, err := it.Next(jetstream.NextMaxWait(e.cfg.ConnectTimeout))
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				err = cerr
			}
			return n, fmt.Errorf("live-log keys: reading up to position %d (%d keys read): %w", last, n, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return n, fmt.Errorf("live-log keys: message metadata: %w", err)
		}
		seq := md.Sequence.Stream
		if seq > last {
			return n, nil // published after the call
		}
		if key, ok := keyOf(m); ok {
			fn(key, seq, md.Timestamp)
			n++
		}
		if seq == last || md.NumPending == 0 {
			return n, nil
		}
	}
}

// keyOf decodes the message's KeyHeader, IDOf a 16-byte key, or the
// Nats-Msg-Id "l"+IDOf(key) of the version before.
func keyOf(m jetstream.Msg) (key [16]byte, ok bool) {
	h := m.Headers()
	s := h.Get(KeyHeader)
	if s == "" {
		if id := h.Get(jetstream.MsgIDHeader); len(id) > 1 && id[0] == 'l' {
			s = id[1:]
		}
	}
	if len(s) != base64.RawURLEncoding.EncodedLen(len(key)) {
		return key, false
	}
	n, err := base64.RawURLEncoding.Decode(key[:], []byte(s))
	return key, err == nil && n == len(key)
}
