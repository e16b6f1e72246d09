package stream

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// FeedFunc takes one live-log entry: its position (0 for a notification,
// which is not retained), its device and its JSON without seq. It must
// not block.
type FeedFunc func(seq uint64, device string, data []byte)

// Feed delivers every live-log entry published from now on, whichever
// instance published it, in stream order and without gaps (an ordered
// consumer re-creates itself from the last position after a disconnect),
// and every notification, to fn. stop ends it; last is the newest position
// when it began: it delivers the entries after it.
//
// It starts by position, after the newest entry, not with DeliverNew:
// nats.go re-creates an ordered consumer that has delivered nothing yet
// with its first configuration, and "new" would then skip what was
// published while it was gone.
func (e *Engine) Feed(ctx context.Context, fn FeedFunc) (stop func(), last uint64, err error) {
	pos, err := e.LivePosition(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("live-log feed: %w", err)
	}
	cons, err := e.feedLive.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{liveSubject + ">"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    pos.Last + 1,
	})
	if err != nil {
		return nil, 0, fmt.Errorf("live-log feed: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		fn(md.Sequence.Stream, strings.TrimPrefix(m.Subject(), liveSubject), m.Data())
	})
	if err != nil {
		return nil, 0, fmt.Errorf("live-log feed: %w", err)
	}
	sub, err := e.feed.Subscribe(notifySubject+">", func(m *nats.Msg) {
		fn(0, strings.TrimPrefix(m.Subject, notifySubject), m.Data)
	})
	// A round trip: the server has the subscription when Feed returns,
	// so no notification published after that is missed.
	if err == nil {
		err = e.feed.FlushTimeout(e.cfg.ConnectTimeout)
	}
	if err != nil {
		if sub != nil {
			_ = sub.Unsubscribe()
		}
		cc.Stop()
		return nil, 0, fmt.Errorf("live-log notifications: %w", err)
	}
	return func() {
		_ = sub.Unsubscribe()
		cc.Stop()
	}, pos.Last, nil
}
