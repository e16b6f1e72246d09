package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// With storage on the embedded engine an uplink is answered once it is in
// UPLINKS, and its live-log entry is stored just after (LogBehind). A
// crash in between (kill -9, an OOM kill, a power cut) can leave an
// answered uplink without its entry. UPLINKS is then what tells: the
// uplink is still there, since storage acknowledges (deletes) an uplink
// only once its entry is resolved (ledger.go), and an entry lags its
// answer by a fraction of a second at most (maxBehindBytes), so at start
// RecoverEntries gives every recent uplink of UPLINKS whose key is not in
// the live log its entry.

const (
	// maxRecover bounds the uplinks RecoverEntries holds to compare:
	// more than the entries that can wait in groups (maxAsyncBytes of
	// them, about 10,000, of which maxBehindBytes behind their answers)
	// and the groups in flight.
	maxRecover = 16384
)

// RecoverEntries logs the entry of every uplink in UPLINKS received up to
// recoverWindow before the newest there whose key is not in the live log
// (nothing without storage, or with NATS_URL), as the handler would have
// (no config_applied: whether a downlink went with it is not known), and
// calls fn with each entry's key, position and the uplink's receipt time.
// It returns how many it logged. Run it before serving, after reading the
// recent keys (RecentKeys): a retransmission of a recovered uplink is then
// recognised like any other.
func (e *Engine) RecoverEntries(ctx context.Context, fn func(key [16]byte, seq uint64, at time.Time)) (int, error) {
	if !e.Behind() {
		return 0, nil
	}
	recent, oldest, err := e.recentUplinks(ctx)
	if err != nil || len(recent) == 0 {
		return 0, err
	}
	missing := make(map[[16]byte]bool, len(recent))
	for _, a := range recent {
		missing[a.Key] = true
	}
	// An entry is stored after its uplink: those of these uplinks are at
	// or after the oldest one's time.
	if _, err := e.RecentKeys(ctx, oldest.Add(-time.Second), func(key [16]byte, _ uint64, _ time.Time) {
		delete(missing, key)
	}); err != nil {
		return 0, fmt.Errorf("recovering live-log entries: %w", err)
	}
	floor, err := e.retainedSince(ctx, recent, missing)
	if err != nil {
		return 0, fmt.Errorf("recovering live-log entries: %w", err)
	}
	n := 0
	for _, a := range recent {
		if !missing[a.Key] {
			continue
		}
		delete(missing, a.Key) // two copies of one uplink: one entry
		if a.ReceivedAt.Before(floor[a.DeviceID]) {
			continue // its entry may have been stored and dropped by retention since
		}
		seq, _, err := e.Log(ctx, livelog.Uplink(a.DeviceID, a.ReceivedAt, a.Uplink, nil), IDOf(a.Key))
		if err != nil {
			return n, fmt.Errorf("recovering live-log entries (%d logged): %w", n, err)
		}
		fn(a.Key, seq, a.ReceivedAt)
		n++
	}
	return n, nil
}

// retainedSince returns, for each device with a missing entry, the time
// from which the live log surely still holds its entries: where retention
// has dropped some (the device at LIVELOG_PER_DEVICE, or the stream's
// oldest messages gone to LIVELOG_MAX_BYTES or LIVELOG_MAX_AGE), the time
// of the oldest kept; otherwise none. An entry older than that may have
// been stored and dropped since: logging it again would show it twice to a
// client resuming with since, and at the per-device limit push out an
// entry that belongs there.
func (e *Engine) retainedSince(ctx context.Context, recent []uplink.Accepted, missing map[[16]byte]bool) (map[string]time.Time, error) {
	info, err := e.live.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("LIVELOG info: %w", err)
	}
	var streamFloor time.Time
	switch st := info.State; {
	case st.FirstSeq > 1 && st.Msgs == 0:
		// Every entry gone: to LIVELOG_MAX_AGE, since the byte limit keeps
		// the newest. An entry stored within it would still be here (the
		// stream's FirstTime is then zero).
		streamFloor = time.Now().Add(-e.cfg.LiveMaxAge)
	case st.FirstSeq > 1:
		streamFloor = st.FirstTime
	}
	floor := make(map[string]time.Time)
	for _, a := range recent {
		if _, done := floor[a.DeviceID]; done || !missing[a.Key] {
			continue
		}
		at := streamFloor
		subj := liveSubject + a.DeviceID
		di, err := e.live.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			return nil, fmt.Errorf("LIVELOG, device %s: %w", a.DeviceID, err)
		}
		if int64(di.State.Subjects[subj]) >= e.cfg.LivePerDevice {
			m, err := e.live.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
			switch {
			case err == nil:
				if m.Time.After(at) {
					at = m.Time
				}
			case !errors.Is(err, jetstream.ErrMsgNotFound):
				return nil, fmt.Errorf("LIVELOG, device %s: %w", a.DeviceID, err)
			}
		}
		floor[a.DeviceID] = at
	}
	return floor, nil
}

// recoverWindow is how far before the newest uplink in UPLINKS an uplink
// may be whose entry is still missing: a group is resolved within
// AckTimeout (2 s by default); a failed group's entries are looked for
// with the next group's, or by a probe (livegroup.go: up to barrierTries
// barriers, reading the position, locate, each within one AckTimeout),
// then sent again, acknowledged within one more: a margin over 7
// AckTimeouts, 17 s by default. Uplinks older than that in UPLINKS had
// their entries settled.
func (e *Engine) recoverWindow() time.Duration {
	return (barrierTries+5)*e.cfg.AckTimeout + time.Second
}

// recentUplinks reads UPLINKS from its newest message back and returns,
// oldest first, the uplinks with a key stored up to recoverWindow before
// the newest (at most maxRecover, from the last maxRecover positions),
// and the time of the oldest message read.
func (e *Engine) recentUplinks(ctx context.Context) ([]uplink.Accepted, time.Time, error) {
	info, err := e.uplinks.Info(ctx)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("recovering live-log entries: UPLINKS info: %w", err)
	}
	st := info.State
	if st.Msgs == 0 {
		return nil, time.Time{}, nil
	}
	var (
		msgs   [][]uplink.Accepted // newest first
		held   int
		oldest time.Time
		cutoff = st.LastTime.Add(-e.recoverWindow())
	)
	// Positions already stored and acknowledged are gaps: at most
	// maxRecover positions are looked at, whatever they hold.
	for seq := st.LastSeq; seq >= st.FirstSeq && seq > 0 && held < maxRecover && st.LastSeq-seq < maxRecover; seq-- {
		m, err := e.uplinks.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // stored and acknowledged since
		}
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("recovering live-log entries: UPLINKS message %d: %w", seq, err)
		}
		if m.Time.Before(cutoff) {
			break
		}
		oldest = m.Time
		var recs []uplink.Accepted
		add := func(b []byte) {
			if a, err := uplink.Unmarshal(b); err == nil && a.Key != ([16]byte{}) {
				recs = append(recs, a)
			}
		}
		if m.Subject == batchSubject {
			_ = splitBatch(m.Data, add) // what is malformed is the storage's to count
		} else {
			add(m.Data)
		}
		msgs = append(msgs, recs)
		held += len(recs)
	}
	var out []uplink.Accepted
	for i := len(msgs) - 1; i >= 0; i-- {
		out = append(out, msgs[i]...)
	}
	return out, oldest, nil
}
