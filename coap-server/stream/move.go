package stream

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
)

// Moving from the embedded server to a cluster (NATS_URL) must not leave
// accepted uplinks behind. Before, the UPLINKS of DATA_DIR's embedded
// store kept what the database had not taken yet, and with NATS_URL
// nothing read it again: tried, 500 uplinks answered 2.04 during a
// database outage, then a start with NATS_URL and the database back: 15 s
// later none of them was stored (with the move, all 500 within 3 s). Now MoveEmbedded publishes them to the
// cluster's UPLINKS, each acknowledged there before it is deleted from
// the embedded store; the embedded UPLINKS is deleted once empty, so
// later starts find nothing to move. A crash in between publishes the
// rest again at the next start: the copies keep their uplink_id and key,
// and the database keeps one row each. The embedded live log is left as
// it was (the cluster's is another stream: a client's since beyond its
// newest position gets the contract's recovered:false).

// embeddedHolds reports whether dir holds an embedded store with a
// stream of that name (nats-server's layout: the global account's).
func embeddedHolds(dir, stream string) bool {
	_, err := os.Stat(filepath.Join(dir, "jetstream", "$G", "streams", stream))
	return err == nil
}

// MoveEmbedded moves the accepted uplinks that the embedded store in
// cfg.DataDir still holds to dst, an engine on NATS_URL that stores
// uplinks, and returns how many it moved. It holds DATA_DIR's lock while
// it runs; ctx ending stops it between batches (the rest is moved at the
// next start). Messages this version cannot read stay in the embedded
// store (UPLINKS_UNREADABLE), logged.
func MoveEmbedded(ctx context.Context, cfg Config, dst *Engine) (int, error) {
	if cfg.URL == "" || !dst.Stores() || !embeddedHolds(cfg.DataDir, UplinksStream) {
		return 0, nil
	}
	cfg.URL, cfg.Replicas, cfg.Storage, cfg.EntriesFollow = "", 1, true, false
	cfg.Creds, cfg.CAFile, cfg.CertFile, cfg.KeyFile = "", "", "", ""
	src, err := Open(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("moving the embedded store's uplinks to NATS_URL: %w", err)
	}
	defer src.Close()
	unreadable := prometheus.NewCounter(prometheus.CounterOpts{Name: "moved_unreadable"})
	uplinks, err := src.UplinkSource(ctx, unreadable)
	if err != nil {
		return 0, err
	}
	moved := 0
	fail := func(err error) (int, error) {
		return moved, fmt.Errorf("moving the embedded store's uplinks to NATS_URL: %w", err)
	}
	// Fetches that found nothing while UPLINKS still held messages: what
	// this version handed back (unreadable, not set aside) waits in it.
	for idle := 0; idle < moveIdleFetches; {
		ds, err := uplinks.Fetch(ctx, 500, 100*time.Millisecond)
		n, merr := moveBatch(ctx, dst, ds)
		moved += n
		if merr != nil {
			return fail(merr)
		}
		if err != nil {
			return fail(err)
		}
		if len(ds) > 0 {
			idle = 0
			continue
		}
		info, err := src.uplinks.Info(ctx)
		if err != nil {
			return fail(err)
		}
		if info.State.Msgs == 0 {
			if err := src.js.DeleteStream(ctx, UplinksStream); err != nil {
				return fail(fmt.Errorf("deleting the embedded %s: %w", UplinksStream, err))
			}
			break
		}
		idle++
	}
	left := map[string]uint64{}
	for _, name := range []string{UplinksStream, AsideStream} {
		if s, err := src.js.Stream(ctx, name); err == nil {
			if info, err := s.Info(ctx); err == nil && info.State.Msgs > 0 {
				left[name] = info.State.Msgs
			}
		}
	}
	if len(left) > 0 {
		src.cfg.Logger.Warn("accepted uplinks this version cannot read stay in DATA_DIR's embedded store: start a newer coap-server on it without NATS_URL to store them",
			"messages", left)
	}
	return moved, nil
}

// moveBatch publishes ds to dst, moveParallel at a time (concurrent
// publishes share dst's UPLINKS batches: one at a time moved about 10,000
// uplinks a second to a nats-server on the same machine, 64 at a time
// about 55,000), and acknowledges each in the
// embedded store once dst took it; one that failed is handed back. It
// returns how many it moved and the first failure.
func moveBatch(ctx context.Context, dst *Engine, ds []storage.Delivery) (int, error) {
	var (
		mu    sync.Mutex
		moved int
		first error
		wg    sync.WaitGroup
		slots = make(chan struct{}, moveParallel)
	)
	for _, d := range ds {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			payload, err := proto.Marshal(d.Accepted.Uplink)
			if err == nil {
				err = dst.PublishUplink(ctx, d.Accepted, payload)
			}
			if err == nil {
				err = d.Ack()
			} else {
				_ = d.Nak()
			}
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				moved++
			} else if first == nil {
				first = err
			}
		})
	}
	wg.Wait()
	return moved, first
}

// moveParallel is how many uplinks MoveEmbedded publishes at once.
const moveParallel = 64

// moveIdleFetches bounds MoveEmbedded's empty fetches while UPLINKS is
// not empty (5 s of them).
const moveIdleFetches = 50
