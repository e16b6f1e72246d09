package stream

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// Sentinel errors of publishing; the CoAP side answers both with 5.03.
var (
	// ErrFull: the stream is at its byte limit (UPLINKS_MAX_BYTES).
	ErrFull = errors.New("stream: full")
	// ErrUnavailable: NATS did not acknowledge in time, or is unreachable.
	ErrUnavailable = errors.New("stream: unavailable")
	// ErrTooManyDevices: the embedded server holds entries of as many
	// distinct devices as its memory bound allows (Config.DeviceMemory); a
	// new device waits until others have been silent for the live log's
	// retention.
	ErrTooManyDevices = errors.New("stream: too many devices for its memory bound")
)

// MsgKey hashes what a CoAP retransmission repeats (RFC 7252 §4.5): the
// device, the message ID, the token and the payload. It is an uplink's Key
// (the database keeps one row of copies that share it) and, encoded
// (IDOf), what its live-log entry carries to recognise a copy by: with
// NATS_URL its Nats-Msg-Id, so that a copy reaching a restarted process or
// another instance within the Duplicates window gets the first one's
// entry; embedded, its KeyHeader, from which RecentKeys rebuilds
// coap-server's own table of recent uplinks after a restart.
func MsgKey(device string, mid int32, token, payload []byte) [16]byte {
	h := sha256.New()
	var b [8]byte
	h.Write([]byte(device))
	h.Write([]byte{0})
	binary.BigEndian.PutUint32(b[:4], uint32(mid))
	binary.BigEndian.PutUint32(b[4:], uint32(len(token)))
	h.Write(b[:])
	h.Write(token)
	h.Write(payload)
	var sum [sha256.Size]byte
	return [16]byte(h.Sum(sum[:0]))
}

// IDOf writes key in unpadded base64url, 22 characters: an external
// server keeps every ID for the Duplicates window, and this takes 24 bytes
// of its heap where hex's 32 characters took 48 (Go's size classes); the
// embedded stream stores it with each entry.
func IDOf(key [16]byte) string {
	return base64.RawURLEncoding.EncodeToString(key[:])
}

// PublishUplink makes a durable in UPLINKS and returns once the stream
// acknowledged the batch it went out in. payload is the device's protobuf,
// a.Uplink its decoding. A retransmission is not recognised here (see
// batch.go): the live log's ID (or, embedded, coap-server's own table) and
// the database's key do that.
func (e *Engine) PublishUplink(ctx context.Context, a uplink.Accepted, payload []byte) error {
	if e.uplinks == nil {
		return nil
	}
	if !e.devices.admit(time.Now(), a.DeviceID) {
		return ErrTooManyDevices
	}
	return e.batches.add(ctx, uplink.AppendMessage(make([]byte, 0, 64+len(payload)), a, payload), a.Key)
}

// Stores reports whether PublishUplink makes uplinks durable (the engine
// has the UPLINKS stream).
func (e *Engine) Stores() bool { return e.uplinks != nil }

// Log puts one live-log entry on the live log (its JSON without seq: the
// position is known once stored) and returns its position once the stream
// acknowledged it.
//
// What a non-empty id (IDOf the uplink's key) does depends on the engine.
// With NATS_URL it is the entry's Nats-Msg-Id: the cluster recognises a
// copy published within the Duplicates window by any instance, or by this
// one after a restart, and returns the first one's position with dup set.
// Embedded, the entry carries it in KeyHeader instead and dup is always
// false: the embedded server's map of message IDs, marked by the
// process's collector, cost a third of a busy source's throughput after a
// few minutes (README, Performance), so coap-server recognises copies in
// its own pointer-free table, which RecentKeys refills after a restart.
func (e *Engine) Log(ctx context.Context, entry *livelog.Entry, id string) (seq uint64, dup bool, err error) {
	lm := liveMsgs.Get().(*liveMsg)
	defer lm.release()
	if lm.buf, err = entry.AppendMarshal(lm.buf[:0]); err != nil {
		return 0, false, fmt.Errorf("live-log entry: %w", err)
	}
	return e.logMsg(ctx, lm, entry.DeviceID, lm.buf, id)
}

// LogJSON is Log of an entry already encoded.
func (e *Engine) LogJSON(ctx context.Context, device string, entry []byte, id string) (seq uint64, dup bool, err error) {
	lm := liveMsgs.Get().(*liveMsg)
	defer lm.release()
	return e.logMsg(ctx, lm, device, entry, id)
}

// liveMsg is what a live-log publish is made of, pooled: PublishMsg copies
// the message into the connection's buffer, and nothing holds it after,
// so an accepted uplink's entry allocates no message, header map or JSON
// buffer of its own.
type liveMsg struct {
	msg    nats.Msg
	header nats.Header // {Nats-Msg-Id: id[:]}, set when the publish has an ID (NATS_URL)
	id     [1]string
	buf    []byte // the entry's JSON (Log)
}

// KeyHeader names the header in which an embedded engine's live-log entry
// of an uplink carries IDOf its key (MsgKey): stored with the entry, it
// lets RecentKeys tell after a restart which uplinks were answered, with
// none of the memory the server's own message IDs would hold.
const KeyHeader = "Nbiot-Key"

// maxPooledEntry: a larger JSON buffer (a rare oversize entry) is not kept.
const maxPooledEntry = 4 << 10

var liveMsgs = sync.Pool{New: func() any {
	lm := &liveMsg{buf: make([]byte, 0, 512)}
	lm.header = nats.Header{jetstream.MsgIDHeader: lm.id[:]}
	return lm
}}

func (lm *liveMsg) release() {
	if cap(lm.buf) > maxPooledEntry {
		lm.buf = make([]byte, 0, 512)
	}
	lm.msg = nats.Msg{}
	lm.id[0] = ""
	liveMsgs.Put(lm)
}

func (e *Engine) logMsg(ctx context.Context, lm *liveMsg, device string, entry []byte, id string) (seq uint64, dup bool, err error) {
	// With storage, PublishUplink already counted the device of an
	// uplink's entry (id set).
	if (id == "" || e.uplinks == nil) && !e.devices.admit(time.Now(), device) {
		return 0, false, ErrTooManyDevices
	}
	if e.groups != nil {
		seq, err = e.groups.add(ctx, liveSubject+device, id, entry, addWaited, nil)
		return seq, false, err
	}
	lm.msg.Subject, lm.msg.Data = liveSubject+device, entry
	e.setLiveID(lm, id)
	ack, err := e.publish(ctx, &lm.msg)
	if err != nil {
		return 0, false, err
	}
	return ack.Sequence, ack.Duplicate, nil
}

// setLiveID puts a non-empty id on the message (NATS_URL) as its
// Nats-Msg-Id, "l"+id, by which the cluster deduplicates. Embedded, the
// groups put it in KeyHeader (see Log).
func (e *Engine) setLiveID(lm *liveMsg, id string) {
	if id != "" {
		lm.id[0] = "l" + id
		lm.msg.Header = lm.header
	}
}

func (e *Engine) publish(ctx context.Context, msg *nats.Msg) (pubAck, error) {
	// No retries inside: the device retransmits, and a fast 5.03 beats a
	// slow one. Concurrent callers pipeline on one connection.
	return e.acks.publish(ctx, msg, e.cfg.AckTimeout)
}

// Behind reports whether an accepted uplink's entry may follow its
// answer (LogBehind): the engine stores uplinks, so an uplink it took is
// accepted whatever becomes of its entry, and it is the live log's only
// writer (embedded), so it learns every entry's position on its own.
func (e *Engine) Behind() bool { return e.uplinks != nil && e.groups != nil }

// LogBehind puts an accepted uplink's live-log entry, with its key id
// (IDOf), in the next group without waiting (Behind must be true): the
// uplink's answer goes out while the entry is being stored, so a durable
// uplink costs one acknowledgement wait, not two. done gets the entry's
// position once it is stored (on the group's goroutine: it must not
// block); for an entry that was not, it is not called and the failure is
// counted (AsyncErrors). When maxBehindBytes of entries are waiting already
// (the stream stores entries slower than uplinks come: an fsync per
// message, a saturated machine), the caller waits until its entry fits
// (at most 2 AckTimeouts): the answers slow down to the rate the live log
// keeps, no entry is dropped for want of room, and none lags its answer
// by more than the stream takes to store that much (BehindWaits counts
// the callers that waited). The error is for an entry the stream did not
// take (too large; no room in time). With EntriesFollow, the entry
// settles what the ledger owes for its uplink, whatever its outcome.
func (e *Engine) LogBehind(entry *livelog.Entry, id string, done func(seq uint64)) error {
	if !e.Behind() {
		return errors.New("stream: LogBehind without storage on the embedded engine")
	}
	lm := liveMsgs.Get().(*liveMsg)
	defer lm.release()
	b, err := entry.AppendMarshal(lm.buf[:0])
	if err != nil {
		e.ledger.settle(id)
		return fmt.Errorf("live-log entry: %w", err)
	}
	lm.buf = b
	// PublishUplink already counted the entry's device.
	subject := liveSubject + entry.DeviceID
	if _, err = e.groups.add(context.Background(), subject, id, b, addBehind, done); err != nil {
		e.asyncErrors.Add(1)
		e.ledger.settle(id) // refused: nothing owed
		return err
	}
	return nil
}

// FlushLive sends the live-log entries being collected and waits, up to
// timeout, until every group sent is resolved: the entries nobody waits
// for (LogBehind, LogAsync) are then stored. Shutdown calls it once the
// CoAP listeners have stopped, before subscribers are disconnected.
func (e *Engine) FlushLive(timeout time.Duration) bool {
	if e.groups == nil {
		return true
	}
	return e.groups.flush(timeout)
}

// LogAsync puts an entry on the live log without waiting for the
// acknowledgement: error entries and downlink events, which must not delay
// an answer. A failure is counted by the engine's async error handler.
func (e *Engine) LogAsync(entry *livelog.Entry) { e.logAsync(entry, "") }

// LogAsyncID is LogAsync of an accepted uplink's entry with its key id
// (IDOf), as Log was given: a Log that gave up on an entry the stream had
// stored (its acknowledgement late or lost) is sent again this way, and
// with NATS_URL the stream recognises it by its message ID ("l"+id) and
// keeps one entry.
func (e *Engine) LogAsyncID(entry *livelog.Entry, id string) { e.logAsync(entry, id) }

func (e *Engine) logAsync(entry *livelog.Entry, id string) {
	// With storage, PublishUplink already counted an uplink's device.
	if (id == "" || e.uplinks == nil) && !e.devices.admit(time.Now(), entry.DeviceID) {
		e.asyncErrors.Add(1)
		return
	}
	b, err := entry.Marshal()
	if err == nil && e.groups != nil {
		_, err = e.groups.add(context.Background(), liveSubject+entry.DeviceID, id, b, addFire, nil)
	} else if err == nil {
		msg := &nats.Msg{Subject: liveSubject + entry.DeviceID, Data: b}
		if id != "" {
			msg.Header = nats.Header{jetstream.MsgIDHeader: []string{"l" + id}}
		}
		_, err = e.js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Millisecond))
	}
	if err != nil {
		e.asyncErrors.Add(1)
	}
}

// Notify sends the report e to every instance's hub, on core NATS: it is
// not retained. Best effort: it never waits.
func (e *Engine) Notify(entry *livelog.Entry) {
	if b, err := entry.Marshal(); err == nil {
		_ = e.nc.Publish(notifySubject+entry.DeviceID, b)
	}
}
