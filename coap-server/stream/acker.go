package stream

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// acker publishes to JetStream and waits for the stream's acknowledgement
// on one wildcard subscription of the publish connection. It does what
// jetstream.PublishMsgAsync does for the publishes an answer waits for,
// with less per message: a counter instead of a random reply token, no
// future object or second channel, and the PubAck's two fields read
// without encoding/json on the success path. Measured 12.3–12.7 µs of
// process CPU per acknowledged LIVELOG publish against 16.3–18.4 µs
// through PublishMsgAsync (BenchmarkUplinksPerMessage/k=1, same box).
type acker struct {
	nc     *nats.Conn
	prefix string // reply subjects are prefix + a decimal ID

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan *nats.Msg // one per waiting publish: bounded by the callers
}

func newAcker(nc *nats.Conn) (*acker, error) {
	a := &acker{nc: nc, prefix: nc.NewInbox() + ".", pending: make(map[uint64]chan *nats.Msg)}
	sub, err := nc.Subscribe(a.prefix+"*", a.deliver)
	if err != nil {
		return nil, err
	}
	// The handler only hands each ack to its waiter: what it may have
	// queued is bounded by the callers waiting, not by a pending limit.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *acker) deliver(m *nats.Msg) {
	id, err := strconv.ParseUint(m.Subject[len(a.prefix):], 10, 64)
	if err != nil {
		return
	}
	a.mu.Lock()
	ch := a.pending[id]
	delete(a.pending, id)
	a.mu.Unlock()
	if ch != nil {
		ch <- m // buffered: never blocks
	}
}

// pubAck is what a publish learns from the stream.
type pubAck struct {
	Sequence  uint64
	Duplicate bool
}

// publish sends msg and waits up to timeout for its acknowledgement.
func (a *acker) publish(ctx context.Context, msg *nats.Msg, timeout time.Duration) (pubAck, error) {
	ch := make(chan *nats.Msg, 1)
	a.mu.Lock()
	a.next++
	id := a.next
	a.pending[id] = ch
	a.mu.Unlock()
	forget := func() {
		a.mu.Lock()
		delete(a.pending, id)
		a.mu.Unlock()
	}
	msg.Reply = a.prefix + strconv.FormatUint(id, 10)
	if err := a.nc.PublishMsg(msg); err != nil {
		forget()
		return pubAck{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m := <-ch:
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			return pubAck{}, fmt.Errorf("%w: no stream answered (no responders)", ErrUnavailable)
		}
		return parseAck(m.Data)
	case <-ctx.Done():
		forget()
		return pubAck{}, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	case <-t.C:
		forget()
		return pubAck{}, fmt.Errorf("%w: no acknowledgement within %v", ErrUnavailable, timeout)
	}
}

var (
	seqKey = []byte(`"seq":`)
	dupKey = []byte(`"duplicate":true`)
)

// parseAck reads a PubAck ({"stream":"S","seq":N[,"duplicate":true]...})
// or an API error ({"error":{"code":C,"err_code":E,"description":"…"}}).
// Anything it cannot read with certainty goes through encoding/json.
func parseAck(b []byte) (pubAck, error) {
	if !bytes.Contains(b, []byte(`"error"`)) {
		if i := bytes.Index(b, seqKey); i >= 0 {
			j := i + len(seqKey)
			k := j
			for k < len(b) && b[k] >= '0' && b[k] <= '9' {
				k++
			}
			if k > j && k < len(b) && (b[k] == ',' || b[k] == '}') {
				if seq, err := strconv.ParseUint(string(b[j:k]), 10, 64); err == nil && seq > 0 {
					return pubAck{Sequence: seq, Duplicate: bytes.Contains(b, dupKey)}, nil
				}
			}
		}
	}
	var r struct {
		Seq       uint64 `json:"seq"`
		Duplicate bool   `json:"duplicate"`
		Error     *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return pubAck{}, fmt.Errorf("%w: unreadable acknowledgement: %v", ErrUnavailable, err)
	}
	switch {
	case r.Error != nil && r.Error.ErrCode == 10077:
		return pubAck{}, fmt.Errorf("%w: %s", ErrFull, r.Error.Description)
	case r.Error != nil:
		return pubAck{}, fmt.Errorf("%w: %s (%d)", ErrUnavailable, r.Error.Description, r.Error.ErrCode)
	case r.Seq == 0:
		return pubAck{}, fmt.Errorf("%w: acknowledgement without a sequence", ErrUnavailable)
	}
	return pubAck{Sequence: r.Seq, Duplicate: r.Duplicate}, nil
}
