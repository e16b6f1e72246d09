package httpapi

import (
	"context"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/nbiot-live/nbiot-live/coap-server/hub"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	"github.com/nbiot-live/nbiot-live/internal/wspeer"
)

// MaxTail bounds tail=N (the contract's limit).
const MaxTail = livelog.MaxTail

// maxHeld and maxHeldBytes bound the live frames one subscriber holds
// while its history is sent (pointers to frames shared with every
// subscriber, which it may be the last to keep). Past either the
// subscriber reads the rest from the stream instead: nothing is dropped.
// In bytes (Frame.Cost) it is a subscriber's queue, DefaultQueueBytes:
// 1,024 entries of another version's largest, 64 KiB, pinned 64 MiB.
const (
	maxHeld      = 1024
	maxHeldBytes = DefaultQueueBytes
)

// maxHeldNotices and maxHeldNoticeBytes bound the retransmission reports
// one subscriber holds besides, while its history is sent. Reports are
// not retained, so they cannot be read again: past either they are
// dropped (and counted), and a flood of replayed datagrams never makes
// the catch-up start over. 128 KiB holds 64 reports of their real size
// (a few hundred bytes, 400 more held) three times over, and one of the
// largest a notice can be (hub: a live-log entry's 64 KiB).
const (
	maxHeldNotices     = 64
	maxHeldNoticeBytes = 128 << 10
)

// History is the retained live log (*stream.Engine).
type History interface {
	LivePosition(ctx context.Context) (stream.Position, error)
	Read(ctx context.Context, cursors []stream.Cursor, upto uint64, fn stream.ReadFunc) error
	TailStart(ctx context.Context, device string, n int, upto uint64) (uint64, error)
}

// start is where a subscriber's stream begins: live only, after a
// position (since), or with each device's last entries (tail).
type start struct {
	since, tail int64 // -1: not given
	notices     bool  // retransmissions=1
	// position=1: once the history is sent, say up to which position the
	// subscriber has everything (positionEntry), so that it can resume
	// after it even when no entry came (the relay asks for it).
	position bool
	fresh    bool   // since is the newest position at the start: nothing to check
	at       uint64 // the newest position before the subscription (history starts)
}

// parseStart reads since, tail (livelog.ParseStart), retransmissions and
// position from a query.
func parseStart(q url.Values) (start, error) {
	st := start{notices: q.Get("retransmissions") == "1", position: q.Get("position") == "1"}
	var err error
	st.since, st.tail, err = livelog.ParseStart(q)
	return st, err
}

func (st start) history() bool { return st.since >= 0 || st.tail >= 0 }

// gate is a subscriber's hub sender. While the subscriber's history is
// being sent it holds live frames; then it forwards them, skipping every
// position already sent, so history and live join with no gap and no
// repeat.
type gate struct {
	peer    *wspeer.Peer
	notices bool

	mu       sync.Mutex
	live     bool
	last     uint64 // highest position sent
	held     []*hub.Frame
	notes    int // reports among held
	bytes    int // the Cost of the entries among held
	noteSize int // the Cost of the reports among held
	overflow bool
	// gapAt is, per device told recovered:false, last+1 when it was: a
	// re-read after an overflow that finds the same hole with nothing
	// sent in between tells it once. Only catchUp uses it.
	gapAt map[string]uint64
}

// Send implements hub.Sender.
func (g *gate) Send(f *hub.Frame) bool {
	if f.Seq == 0 && !g.notices {
		return true // a notice this subscriber did not ask for
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.live {
		switch {
		case f.Seq == 0:
			if g.overflow || g.notes >= maxHeldNotices || g.noteSize+f.Cost > maxHeldNoticeBytes {
				return false // a report: dropped, not read again
			}
			g.notes++
			g.noteSize += f.Cost
			g.held = append(g.held, f)
		case g.overflow:
		case len(g.held)-g.notes >= maxHeld || g.bytes+f.Cost > maxHeldBytes:
			g.overflow = true
			g.drop()
		default:
			g.bytes += f.Cost
			g.held = append(g.held, f)
		}
		return true
	}
	if f.Seq == 0 {
		// A retransmission report: dropped when the queue is full rather
		// than cutting the subscriber off (anyone can replay a datagram).
		return g.peer.TrySend(f.Msg, f.Cost)
	}
	if f.Seq <= g.last {
		return true
	}
	g.last = f.Seq
	return g.peer.Send(f.Msg, f.Cost)
}

// catchUp sends the subscriber's history, then opens the gate. On error
// the subscriber is disconnected (it reconnects with since, losing nothing).
func (s *Server) catchUp(ctx context.Context, g *gate, devices []string, st start) {
	if err := s.sendHistory(ctx, g, devices, st); err != nil {
		if ctx.Err() == nil {
			s.Logger.Warn("ws history failed; subscriber disconnected", "err", err)
		}
		g.peer.Close(errHistory)
	}
}

var errHistory = &wspeer.CloseError{Code: websocket.CloseTryAgainLater, Text: "history unavailable, reconnect with since"}

func (s *Server) sendHistory(ctx context.Context, g *gate, devices []string, st start) error {
	pos, err := s.History.LivePosition(ctx)
	if err != nil {
		return err
	}
	watched := devices
	if len(watched) == 0 {
		watched = []string{""} // every device: the whole log
	}
	cursors := make([]stream.Cursor, 0, len(watched))
	for _, d := range watched {
		c := stream.Cursor{Device: d, From: 1}
		switch {
		case st.since >= 0:
			// Read says recovered:false first when entries after since
			// are gone, and where they go while it reads.
			c.From = uint64(st.since) + 1
			if !st.fresh {
				c.Gap = g.gap(ctx, d)
			}
		case st.tail >= 0:
			// The last entries before the subscription; Read then sends
			// every one after them up to upto.
			if c.From, err = s.History.TailStart(ctx, d, int(st.tail), min(st.at, pos.Last)); err != nil {
				return err
			}
		default:
			c.From = pos.Last + 1
		}
		cursors = append(cursors, c)
	}
	if st.since >= 0 && uint64(st.since) <= pos.Last {
		// The subscriber has every entry up to since: a late live frame
		// at or below it (a feed behind the stream) is not sent again.
		// Beyond the newest position the stream was reset: what follows
		// is numbered from 1 again.
		g.last = max(g.last, uint64(st.since))
	}
	upto := pos.Last
	for {
		if err := s.History.Read(ctx, cursors, upto, g.sendEntry(ctx)); err != nil {
			return err
		}
		if st.position {
			// Everything up to upto was read, and what the gate holds is
			// after it: the subscriber has every entry up to here.
			st.position = false
			g.last = max(g.last, upto)
			for _, d := range watched {
				if err := g.sendNow(ctx, positionEntry(d, g.last, time.Now())); err != nil {
					return err
				}
			}
		}
		for {
			held, overflow := g.take()
			if overflow {
				break
			}
			if held == nil {
				return nil // the gate is open
			}
			for _, f := range held {
				if err := g.sendFrame(ctx, f); err != nil {
					return err
				}
			}
		}
		// More went by than the gate holds: read it from the stream, from
		// where each cursor is: past what was sent (g.last), never before
		// where it started (since, tail; Read moved it to 1 after a
		// stream reset), even when nothing was sent yet.
		if pos, err = s.History.LivePosition(ctx); err != nil {
			return err
		}
		for i := range cursors {
			cursors[i].From = max(cursors[i].From, g.last+1)
			cursors[i].Gap = g.gap(ctx, cursors[i].Device)
		}
		upto = pos.Last
	}
}

// take returns the frames held so far, or opens the gate when there are
// none. overflow says the gate dropped what it held.
func (g *gate) take() (held []*hub.Frame, overflow bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.overflow {
		g.overflow = false
		g.drop()
		return nil, true
	}
	if len(g.held) == 0 {
		g.live = true
		return nil, false
	}
	held = g.held
	g.drop()
	g.held = make([]*hub.Frame, 0, len(held))
	return held, false
}

// drop empties what the gate holds; g.mu is held.
func (g *gate) drop() { g.held, g.notes, g.bytes, g.noteSize = nil, 0, 0, 0 }

func (g *gate) sendEntry(ctx context.Context) stream.ReadFunc {
	return func(seq uint64, _ string, data []byte) error {
		f, err := hub.NewFrame(seq, data)
		if err != nil {
			return nil // not ours to crash on: skip it
		}
		return g.sendFrame(ctx, f)
	}
}

// sendFrame sends a history or held frame, waiting for room, unless its
// position was sent already.
func (g *gate) sendFrame(ctx context.Context, f *hub.Frame) error {
	if f.Seq != 0 {
		if f.Seq <= g.last {
			return nil
		}
		g.last = f.Seq // only catchUp writes last until the gate opens
	}
	return g.peer.SendWait(ctx, f.Msg, f.Cost)
}

func (g *gate) sendNow(ctx context.Context, e *livelog.Entry) error {
	b, err := e.Marshal()
	if err != nil {
		return err
	}
	f, err := hub.NewFrame(0, b)
	if err != nil {
		return err
	}
	return g.peer.SendWait(ctx, f.Msg, f.Cost)
}

// gap sends recovered:false for device where its history is incomplete,
// unless it was the last thing sent for it.
func (g *gate) gap(ctx context.Context, device string) func() error {
	return func() error {
		if g.gapAt[device] == g.last+1 {
			return nil
		}
		if g.gapAt == nil {
			g.gapAt = make(map[string]uint64)
		}
		g.gapAt[device] = g.last + 1
		return g.sendNow(ctx, recoveredFalse(device, time.Now()))
	}
}

// positionEntry tells a subscriber that asked for it (position=1) that it
// has every entry of device up to position p: a since=p resumes it.
func positionEntry(device string, p uint64, now time.Time) *livelog.Entry {
	return livelog.Status(device, now, "History sent: live from here", map[string]uint64{"position": p})
}

// recoveredFalse is the status entry that comes first when history after
// since is no longer complete (retention) or since is beyond the newest
// position (the stream was reset).
func recoveredFalse(device string, now time.Time) *livelog.Entry {
	return livelog.Status(device, now, "Earlier entries are no longer retained: some may be missing here", map[string]bool{"recovered": false})
}
