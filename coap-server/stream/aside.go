package stream

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A message of UPLINKS that this version cannot read (what a newer
// coap-server wrote, on a NATS_URL shared during a rolling deploy or left
// by one rolled back) is moved aside, to UPLINKS_UNREADABLE, instead of
// waiting in UPLINKS: there it counted in the storage consumer's
// acknowledgements pending, and 20,000 of them stopped storage for the
// readable ones. Moving is a publish of a copy, acknowledged by the
// stream, then the acknowledgement of the original: a crash in between
// leaves the original, moved again when delivered again, and the copy's
// message ID (the original's position) makes the second copy a duplicate
// for the stream. Every version from this one on stores what it can read
// of UPLINKS_UNREADABLE, through a consumer of its own polled every
// asidePoll, and hands back, with a growing delay, what it cannot: there
// it stops nothing else. When the stream is full or missing, the message
// is handed back in UPLINKS as before (handBack).
const (
	AsideStream   = "UPLINKS_UNREADABLE"
	AsideConsumer = "storage-unreadable"
	asideSubject  = "nbiot.unreadable.v1"
	// SubjectHeader carries a moved message's subject in UPLINKS, which
	// says how to read it.
	SubjectHeader = "Nbiot-Subject"
	// asidePoll is how often the storage consumer looks for what it can
	// read in UPLINKS_UNREADABLE (a newer version for what an older one
	// moved there): one fetch that waits for nothing.
	asidePoll = 10 * time.Second
	// asideFetch bounds the messages one such look takes (each at most
	// UPLINKS' MaxMsgSize, 64 KiB).
	asideFetch = 16
)

// asideConfig is UPLINKS_UNREADABLE's configuration: a work queue as
// UPLINKS, a sixteenth of its bytes (what one version cannot read is rare
// and waits for a newer one; 32 MiB by default, hundreds of thousands of
// uplinks at low rates), full meaning the message stays in UPLINKS.
func (c Config) asideConfig() jetstream.StreamConfig {
	u := c.uplinksConfig()
	u.Name = AsideStream
	u.Description = "nbiot-live: accepted uplinks that a coap-server could not read, for one that can"
	u.Subjects = []string{asideSubject}
	u.MaxBytes = max(c.UplinksBytes/16, 1<<20)
	return u
}

// ensureAside creates UPLINKS_UNREADABLE and its consumer, or brings them
// to the configuration without tightening any limit (what it holds are
// accepted uplinks). It is the engine's ensure's, after UPLINKS'; a
// failure is not the engine's: without the stream, unreadable messages
// stay in UPLINKS as before.
func (e *Engine) ensureAside(ctx context.Context) error {
	s, err := e.ensureStream(ctx, e.cfg.asideConfig(), keepAll)
	if err != nil {
		return err
	}
	_, err = s.CreateOrUpdateConsumer(ctx, e.storageConsumerConfig(AsideConsumer, asideDescription, s))
	return err
}

// keepAll changes want so that updating the stream that info describes
// tightens no limit: it would delete accepted uplinks.
func keepAll(info *jetstream.StreamInfo, want *jetstream.StreamConfig) {
	keepAgeAndCounts(info.Config, want)
	if tighter(info.Config.MaxBytes, want.MaxBytes) {
		want.MaxBytes = info.Config.MaxBytes
	}
}

// moveAside moves m, a message of UPLINKS this version cannot read, to
// UPLINKS_UNREADABLE: nil when it is there.
func (s *UplinkSource) moveAside(m jetstream.Msg) error {
	md, err := m.Metadata()
	if err != nil {
		return err
	}
	out := nats.NewMsg(asideSubject)
	for k, v := range m.Headers() {
		out.Header[k] = v
	}
	out.Header.Set(SubjectHeader, m.Subject())
	// Its position in UPLINKS: a copy made again after a crash is a duplicate.
	out.Header.Set(jetstream.MsgIDHeader, "unreadable-"+strconv.FormatUint(md.Sequence.Stream, 10))
	out.Data = m.Data()
	ctx, cancel := context.WithTimeout(context.Background(), s.ackTimeout)
	defer cancel()
	if _, err := s.js.PublishMsg(ctx, out, jetstream.WithExpectStream(AsideStream)); err != nil {
		return err
	}
	// If this fails, the original is delivered again and moved again.
	_ = m.Ack()
	return nil
}

// fetchAside appends to got what UPLINKS_UNREADABLE holds for up to want
// uplinks, once every asidePoll (by one caller at a time), waiting for
// nothing. A stream or consumer that NATS lost is made again.
func (s *UplinkSource) fetchAside(got []parked, want int) []parked {
	if want <= 0 || !s.asideMu.TryLock() {
		return got
	}
	defer s.asideMu.Unlock()
	now := time.Now()
	if now.Before(s.nextAside) {
		return got
	}
	s.nextAside = now.Add(asidePoll)
	if s.aside == nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.ackTimeout)
		c, err := s.js.Consumer(ctx, AsideStream, AsideConsumer)
		if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			if err = s.ensureAside(ctx); err == nil {
				c, err = s.js.Consumer(ctx, AsideStream, AsideConsumer)
			}
		}
		cancel()
		if err != nil {
			return got
		}
		s.aside = c
	}
	batch, err := s.aside.FetchNoWait(min(want, asideFetch))
	if err != nil {
		s.aside = nil // looked up again next time
		return got
	}
	for m := range batch.Messages() {
		got = s.deliveries(got, m)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
		s.aside = nil
	}
	return got
}
