package stream

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// trimEvery is how often stored uplinks are purged from UPLINKS: what the
// stream holds beyond its backlog is at most this much of traffic.
const trimEvery = time.Second

// trim purges UPLINKS below the storage consumer's ack floor (every uplink
// there is committed to the database) until ctx ends. Every instance runs
// it; purging the same range twice changes nothing.
func (e *Engine) trim(ctx context.Context, cons jetstream.Consumer) {
	t := time.NewTicker(trimEvery)
	defer t.Stop()
	var purged uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, trimEvery)
		info, err := cons.Info(cctx)
		if err == nil && info.AckFloor.Stream > purged {
			floor := info.AckFloor.Stream
			if err = e.storeUplink.Purge(cctx, jetstream.WithPurgeSequence(floor+1)); err == nil {
				purged = floor
			}
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			e.trimErrors.Add(1)
		}
	}
}
