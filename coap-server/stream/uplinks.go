package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
)

// UplinkSource is the storage consumer of UPLINKS, shared by every
// instance on the same NATS: each batch goes to one of them. It implements
// storage.Source.
type UplinkSource struct {
	cons      jetstream.Consumer
	malformed prometheus.Counter
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
	return &UplinkSource{cons: cons, malformed: malformed}, nil
}

// Fetch implements storage.Source.
func (s *UplinkSource) Fetch(ctx context.Context, max int, wait time.Duration) ([]storage.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	batch, err := s.cons.Fetch(max, jetstream.FetchMaxWait(wait))
	if err != nil {
		return nil, err
	}
	var ds []storage.Delivery
	for m := range batch.Messages() {
		a, err := uplink.Unmarshal(m.Data())
		if err != nil {
			s.malformed.Inc()
			_ = m.Term()
			continue
		}
		ds = append(ds, storage.Delivery{Accepted: a, Ack: m.Ack, InProgress: m.InProgress, Nak: m.Nak})
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
		return ds, err
	}
	return ds, nil
}

// Pending is the number of uplinks waiting for the database.
func (s *UplinkSource) Pending(ctx context.Context) (uint64, error) {
	info, err := s.cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.NumPending + uint64(info.NumAckPending), nil
}

// UplinksHeld is the number of uplinks in UPLINKS (not yet stored).
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
