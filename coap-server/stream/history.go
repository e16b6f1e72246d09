package stream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Position is the live log's retained range: First is the oldest
// retained position, Last the newest (0 when empty), Deleted how many
// positions between them are gone (LIVELOG_PER_DEVICE drops a device's
// oldest entry from the middle of the log).
type Position struct {
	First, Last uint64
	Deleted     int
}

// LivePosition reads the live log's retained range.
func (e *Engine) LivePosition(ctx context.Context) (Position, error) {
	info, err := e.feedLive.Info(ctx)
	if err != nil {
		return Position{}, fmt.Errorf("live log: %w", err)
	}
	return Position{First: info.State.FirstSeq, Last: info.State.LastSeq, Deleted: info.State.NumDeleted}, nil
}

// Lost reports whether entries of device (every device when empty) after
// since may have been dropped by retention, or since lies beyond the newest
// position (the stream was reset): either way, history cannot be resumed
// exactly. The stream does not say whose entries it dropped, so for a
// device the answer errs on the safe side: entries may be lost when since
// is older than the device's oldest retained entry and either the log
// dropped positions after since (age, bytes) or the device is at
// LIVELOG_PER_DEVICE. A false "lost" costs a gap marker, never an entry.
// For every device it answers for the log's head only: positions are
// consecutive as published, so Read finds a gap in the middle where it is.
func (e *Engine) Lost(ctx context.Context, device string, since uint64, pos Position) (bool, error) {
	if since > pos.Last {
		return true, nil
	}
	headDropped := pos.First > 0 && since+1 < pos.First
	if device == "" {
		return headDropped, nil
	}
	subj := liveSubject + device
	oldest, err := e.feedLive.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return headDropped, nil
	}
	if err != nil {
		return false, fmt.Errorf("live log: %w", err)
	}
	if since+1 >= oldest.Sequence {
		return false, nil // since is inside the device's retained entries
	}
	if headDropped {
		return true, nil
	}
	info, err := e.feedLive.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		return false, fmt.Errorf("live log: %w", err)
	}
	return int64(info.State.Subjects[subj]) >= e.cfg.LivePerDevice, nil
}

// Cursor is where reading one device's history starts: entries with a
// position of at least From.
//
// With Gap set, the cursor resumes a reader that has every entry before
// From, so none after it may go missing unsaid: Read calls Gap where
// entries after From-1 are missing, once per hole (not again before
// another entry of the cursor). For one device it first asks Lost about
// From-1 and, when entries are lost, calls Gap before anything else; for
// every device the positions read must follow one another from From, so
// the Gap comes before the first entry after each hole, the log's head
// included. A From-1 beyond the newest position is a reset stream: Gap
// first, then everything retained, and Read sets the cursor's From to 1
// (a caller reading again goes on from there). Entries can also go while
// Read runs (retention drops the oldest first): each is told the same
// way, before the first entry after it, or at the end.
type Cursor struct {
	Device string // empty = every device
	From   uint64
	Gap    func() error
}

// ReadFunc takes one retained entry in position order.
type ReadFunc func(seq uint64, device string, data []byte) error

// historyBatch is how many entries one device's reader holds at a time:
// history of up to 100 devices merged costs at most 100 × 64 entries.
const historyBatch = 64

// Read calls fn for every retained entry at the cursors' devices from
// their From up to and including upto, merged in position order (and a
// cursor's Gap where entries after its From are missing). It holds at
// most historyBatch entries per cursor.
func (e *Engine) Read(ctx context.Context, cursors []Cursor, upto uint64, fn ReadFunc) error {
	readers := make([]*reader, 0, len(cursors))
	defer func() {
		for _, r := range readers {
			r.close()
		}
	}()
	for i := range cursors {
		c := &cursors[i]
		var (
			h    hole
			told bool
		)
		if c.Gap != nil && c.From > 0 {
			var err error
			if h, told, err = e.resumeCheck(ctx, c, upto); err != nil {
				return err
			}
			if afterResumeCheck != nil {
				afterResumeCheck()
			}
		}
		if c.From > upto {
			continue // nothing retained after it: nothing can go missing
		}
		r, err := e.newReader(ctx, *c, upto)
		if err != nil {
			return err
		}
		r.hole, r.gap, r.told = h, c.Gap, told
		readers = append(readers, r)
	}
	for {
		var next *reader
		for _, r := range readers {
			if err := r.fill(); err != nil {
				return err
			}
			if len(r.buf) == 0 && r.done && r.hole.kind != noCheck && r.hole.atEnd(r.upto) {
				if err := r.tell(); err != nil {
					return err
				}
			}
			if len(r.buf) > 0 && (next == nil || r.buf[0].seq < next.buf[0].seq) {
				next = r
			}
		}
		if next == nil {
			return nil
		}
		m := next.buf[0]
		next.buf = next.buf[1:]
		if next.hole.kind != noCheck && next.hole.before(m.seq) {
			if err := next.tell(); err != nil {
				return err
			}
		}
		next.told = false
		if err := fn(m.seq, m.device, m.data); err != nil {
			return err
		}
	}
}

// afterResumeCheck and afterFetch, set by tests only, run between a
// resumed cursor's check and its reader's start, and between a page's
// fetch and its check.
var afterResumeCheck, afterFetch func()

// hole is how a resumed cursor's reader finds entries that went missing
// while Read ran. Retention drops the oldest entries first (of the log:
// age, bytes; of a device: LIVELOG_PER_DEVICE).
//
// Every device: positions are consecutive as published, so each entry
// must be at the position after the one before, up to upto (next).
//
// One device: its entries are not consecutive positions, and a page is
// not a snapshot (the server sends it message by message, and retention
// may drop entries between two of them). What is checked, once a page is
// in, is that the device's oldest retained entry is not after the page's
// anchor: the previous page's last entry (prev), or on the first page its
// first entry, which must be the device's first at or after From when
// Read began (first). Retention drops the oldest first, so then nothing
// after the anchor has gone, and the page is complete. A device whose
// oldest entries are dropped faster than a page is read (busy, at
// LIVELOG_PER_DEVICE) may be told of a gap that is not one: a false "lost"
// costs a marker, never an entry. The marker comes before the page where
// the check failed.
type hole struct {
	kind  holeKind
	next  uint64 // every device: the next position expected
	first uint64 // one device: its expected first entry (0: none expected)
	prev  uint64 // one device: the last entry fetched (0: none yet)
	// What the reader found: a gap before the entry at seq at, or after
	// its last entry (end). Each is told once.
	at  uint64
	end bool
}

type holeKind uint8

const (
	noCheck     holeKind = iota // not resumed, or reading all that is retained
	everyDevice                 // consecutive positions
	oneDevice                   // each page's first entry
)

// before reports whether entries went missing before seq.
func (h *hole) before(seq uint64) bool {
	if h.kind == everyDevice {
		missing := seq != h.next
		h.next = seq + 1
		return missing
	}
	missing := h.at == seq
	if missing {
		h.at = 0
	}
	return missing
}

// atEnd reports, once, whether entries went missing after the last one.
func (h *hole) atEnd(upto uint64) bool {
	missing := h.end || h.kind == everyDevice && h.next <= upto
	*h = hole{}
	return missing
}

// resumeCheck sets up a resumed cursor's checks (hole), and calls c.Gap
// at once where the entries after c.From-1 are known to be incomplete
// (told). A c.From-1 beyond upto, the newest position when the subscriber
// arrived, is a reset stream even if entries have been published since:
// c.From becomes 1. For one device, its expected first entry is read
// before Lost: an entry Lost saw retained is one the reader must find,
// unless it was dropped since, which the reader then tells.
func (e *Engine) resumeCheck(ctx context.Context, c *Cursor, upto uint64) (h hole, told bool, err error) {
	since := c.From - 1
	reset := since > upto
	if reset {
		c.From = 1
	}
	if c.Device == "" {
		// Positions are consecutive as published: the reader finds every
		// one missing after since, at the head too, and tells it there.
		h = hole{kind: everyDevice, next: c.From}
		if reset {
			return h, true, c.Gap()
		}
		return h, false, nil
	}
	h.kind = oneDevice
	m, err := e.feedLive.GetMsg(ctx, c.From, jetstream.WithGetMsgSubject(liveSubject+c.Device))
	switch {
	case err == nil:
		h.first = m.Sequence
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return h, false, fmt.Errorf("live log: %w", err)
	}
	lost := reset
	if !lost {
		pos, err := e.LivePosition(ctx)
		if err != nil {
			return h, false, err
		}
		// The reader reads up to upto; what comes after is the live
		// subscription's, whatever retention does to it.
		pos.Last = min(pos.Last, upto)
		if lost, err = e.Lost(ctx, c.Device, since, pos); err != nil {
			return h, false, err
		}
	}
	if lost {
		return h, true, c.Gap()
	}
	return h, false, nil
}

// TailStart returns the position from which device's last n retained
// entries up to upto begin (upto+1 when it has none); device "" is the
// whole log. A device's entries are scanned once (LIVELOG_PER_DEVICE
// bounds them). The whole log's positions are contiguous but for the
// entries retention deleted, so its last n lie in the last n positions
// and the holes among them: it is read backwards in windows, each twice
// as wide as the one before, until one holds the rest. tail=1 of a log of
// 500,000 entries reads one entry, not the log.
func (e *Engine) TailStart(ctx context.Context, device string, n int, upto uint64) (uint64, error) {
	if n <= 0 {
		return upto + 1, nil
	}
	if device != "" {
		start, _, err := e.tailIn(ctx, device, 1, upto, n)
		return start, err
	}
	pos, err := e.LivePosition(ctx)
	if err != nil {
		return 0, err
	}
	first := max(pos.First, 1)
	start, found := upto+1, 0
	for hi, width := min(upto, pos.Last), uint64(n); hi >= first; hi, width = hi-width, 2*width {
		width = min(width, hi-first+1)
		s, count, err := e.tailIn(ctx, "", hi-width+1, hi, n-found)
		if err != nil {
			return 0, err
		}
		if count > 0 {
			start = s
		}
		if found += count; found >= n {
			break
		}
	}
	return start, nil
}

// tailIn counts the entries of device ("" = all) from from to upto and
// returns where the last n of them begin (upto+1 when there are none).
func (e *Engine) tailIn(ctx context.Context, device string, from, upto uint64, n int) (uint64, int, error) {
	r, err := e.newReader(ctx, Cursor{Device: device, From: from}, upto)
	if err != nil {
		return 0, 0, err
	}
	defer r.close()
	ring := make([]uint64, n)
	count := 0
	for {
		if err := r.fill(); err != nil {
			return 0, 0, err
		}
		if len(r.buf) == 0 {
			break
		}
		for _, m := range r.buf {
			ring[count%n] = m.seq
			count++
		}
		r.buf = r.buf[:0]
	}
	switch {
	case count == 0:
		return upto + 1, 0, nil
	case count < n:
		return ring[0], count, nil
	default:
		return ring[count%n], count, nil
	}
}

type entry struct {
	seq    uint64
	device string
	data   []byte
}

// reader pages through one device's history with an ordered consumer
// (JetStream's own flow control; one filter subject, which NATS 2.9 and
// later all support).
type reader struct {
	e       *Engine
	ctx     context.Context
	cons    jetstream.Consumer
	subject string
	upto    uint64
	buf     []entry
	done    bool
	hole    hole         // resumed cursors only
	gap     func() error // resumed cursors only
	told    bool         // gap called, and no entry delivered since
}

// tell calls the cursor's Gap, unless it was just called: one marker per
// hole, however many checks find it.
func (r *reader) tell() error {
	if r.told {
		return nil
	}
	r.told = true
	return r.gap()
}

func (e *Engine) newReader(ctx context.Context, c Cursor, upto uint64) (*reader, error) {
	subj := liveSubject + ">"
	if c.Device != "" {
		subj = liveSubject + c.Device
	}
	from := c.From
	if from == 0 {
		from = 1
	}
	cons, err := e.feedLive.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
	})
	if err != nil {
		return nil, fmt.Errorf("live-log history: %w", err)
	}
	return &reader{e: e, ctx: ctx, cons: cons, subject: subj, upto: upto}, nil
}

// fill fetches the next page when the buffer is empty. A page without
// messages, a message past upto, or one with nothing pending behind it
// ends the reader.
func (r *reader) fill() error {
	if len(r.buf) > 0 || r.done {
		return nil
	}
	if err := r.ctx.Err(); err != nil {
		return err
	}
	batch, err := r.cons.FetchNoWait(historyBatch)
	if err != nil {
		return fmt.Errorf("live-log history: %w", err)
	}
	n, first := 0, uint64(0)
	for m := range batch.Messages() {
		n++
		md, err := m.Metadata()
		if err != nil {
			continue
		}
		seq := md.Sequence.Stream
		if first == 0 {
			first = seq
		}
		if seq > r.upto {
			r.done = true
			continue
		}
		r.buf = append(r.buf, entry{seq: seq, device: strings.TrimPrefix(m.Subject(), liveSubject), data: m.Data()})
		if md.NumPending == 0 {
			r.done = true
		}
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
		return fmt.Errorf("live-log history: %w", err)
	}
	if n == 0 {
		r.done = true
	}
	if afterFetch != nil {
		afterFetch()
	}
	if r.hole.kind == oneDevice {
		return r.checkPage(first)
	}
	return nil
}

// checkPage runs one device's hole check on the page just fetched, whose
// first entry is at first (0: the page was empty).
func (r *reader) checkPage(first uint64) error {
	h := &r.hole
	defer func() {
		if n := len(r.buf); n > 0 {
			h.prev = r.buf[n-1].seq
		}
	}()
	anchor := h.prev
	if anchor == 0 && len(r.buf) > 0 {
		anchor = r.buf[0].seq
	}
	var missing bool
	switch expected := h.first > 0 && h.first <= r.upto; {
	case h.prev == 0 && expected && first != h.first:
		missing = true // the expected entry is not the page's first, or never came
	case anchor != 0 && (first != 0 || r.done):
		oldest, err := r.e.feedLive.GetMsg(r.ctx, 1, jetstream.WithGetMsgSubject(r.subject))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			missing = true
		case err != nil:
			return fmt.Errorf("live log: %w", err)
		default:
			missing = oldest.Sequence > anchor
		}
	}
	switch {
	case !missing:
	case first != 0 && first <= r.upto && len(r.buf) > 0:
		h.at = first
	default:
		h.end = true
	}
	return nil
}

// close deletes the reader's consumer at once (deleteLiveConsumer).
func (r *reader) close() { r.e.deleteLiveConsumer(r.cons) }

// deleteLiveConsumer deletes an ordered consumer of the live log at once
// instead of leaving it to expire (ordered consumers go away by
// themselves only after InactiveThreshold idle).
func (e *Engine) deleteLiveConsumer(cons jetstream.Consumer) {
	if info := cons.CachedInfo(); info != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = e.feedJS.DeleteConsumer(ctx, LiveLogStream, info.Name)
	}
}
