package stream

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// On the embedded engine this process is the storage consumers' only
// reader (one process per DATA_DIR: lock.go), so at start whatever they
// hold delivered and unacknowledged was fetched by a process that ended
// without storing it (kill -9, an OOM kill, a power cut). The stream
// would give those uplinks again only after RedeliverAfter (1 min): tried,
// a kill -9 during a database outage with 2,000 uplinks waiting left 35
// of them out of the database for 40 s after the restart while the rest
// were stored at once. So at start such a consumer is made again: a work
// queue keeps its messages when its consumer is deleted, and the new one
// delivers from the first, at once. A crash between the two leaves no
// consumer, which the next start (ensure) creates, the same way. Never
// with NATS_URL: there other instances' fetches are in flight.

// redeliverOrphans recreates the storage consumers that hold deliveries of
// a process that ended, and returns how many uplink messages they held.
func (e *Engine) redeliverOrphans(ctx context.Context) (int, error) {
	if e.ns == nil || e.uplinks == nil {
		return 0, nil
	}
	held := 0
	for _, c := range []struct {
		stream, name, description string
	}{
		{UplinksStream, StorageConsumer, storageDescription},
		{AsideStream, AsideConsumer, asideDescription},
	} {
		s, err := e.js.Stream(ctx, c.stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue // UPLINKS_UNREADABLE could not be made (ensureAside)
		}
		if err != nil {
			return held, fmt.Errorf("stream %s: %w", c.stream, err)
		}
		cons, err := s.Consumer(ctx, c.name)
		if err != nil {
			return held, fmt.Errorf("consumer %s: %w", c.name, err)
		}
		info := cons.CachedInfo()
		if info == nil || info.NumAckPending == 0 {
			continue
		}
		if err := s.DeleteConsumer(ctx, c.name); err != nil {
			return held, fmt.Errorf("consumer %s: %w", c.name, err)
		}
		if _, err := s.CreateOrUpdateConsumer(ctx, e.storageConsumerConfig(c.name, c.description, s)); err != nil {
			return held, fmt.Errorf("consumer %s: %w", c.name, err)
		}
		held += info.NumAckPending
	}
	return held, nil
}
