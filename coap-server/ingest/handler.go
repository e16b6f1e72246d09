package ingest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/nbiot-live/nbiot-live/coap-server/stream"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// DefaultMaxPayload is the largest uplink payload accepted, in bytes. A full
// uplink with ten wifi APs, a fix and a config is about 300 bytes; NB-IoT
// operators deliver datagrams of ~1300 bytes at most (docs/pitfalls.md#fly: plan for
// ~1300-byte datagrams), so 1024 leaves room without inviting abuse.
const DefaultMaxPayload = 1024

// RetryAfter is the Max-Age of a 5.03 answer when the stream cannot take
// the uplink (RFC 7252 §5.9.3.4): the device should try again after that
// many seconds.
const RetryAfter = 30

// Stream makes an accepted uplink durable and carries the live log
// (*stream.Engine). The datagram path waits for nothing slower than its
// acknowledgements.
type Stream interface {
	// PublishUplink returns once a is durable (at once, doing nothing,
	// when Stores is false).
	PublishUplink(ctx context.Context, a uplink.Accepted, payload []byte) error
	// Stores reports whether PublishUplink makes uplinks durable (a
	// storage stream): then an uplink it took is accepted, whatever
	// becomes of its live-log entry.
	Stores() bool
	// Log puts an entry on the live log and returns its position; with
	// an id, a repeat returns the first position with dup set.
	Log(ctx context.Context, entry *livelog.Entry, id string) (seq uint64, dup bool, err error)
	// LogAsync puts an entry on the live log without waiting.
	LogAsync(entry *livelog.Entry)
	// LogAsyncID is LogAsync of an accepted uplink's entry with the id
	// Log was given, so that a stream that stored the first try keeps
	// one entry.
	LogAsyncID(entry *livelog.Entry, id string)
	// Behind reports whether an accepted uplink's entry may follow its
	// answer: uplinks are stored (Stores), and the engine learns its
	// entries' positions without waiting for them (the embedded one).
	Behind() bool
	// LogBehind puts an accepted uplink's entry with its key id on the
	// live log without waiting (only when Behind); done, if set, gets
	// its position once it is stored. The error is for an entry refused
	// at once.
	LogBehind(entry *livelog.Entry, id string, done func(seq uint64)) error
	// Notify sends a report that is not retained to every instance's hub.
	Notify(entry *livelog.Entry)
}

// DeviceSet says whether a device is in a set (has DTLS credentials, is
// registered), from memory. known is false while that is not known yet
// (the list was never loaded). devset.Set implements it.
type DeviceSet interface {
	Has(deviceID string) (has, known bool)
}

// Downlinks answers an accepted uplink with a pending configuration. It must
// not block (pending downlinks are held in memory).
type Downlinks interface {
	// ForUplink returns the encoded Downlink to send (nil: none), the
	// uplink entry's config_applied (nil: no downlink was sent to the
	// device) and a downlink entry to log after the uplink's (nil: none).
	ForUplink(a uplink.Accepted) (payload []byte, configApplied *bool, entry *livelog.Entry)
}

// Handler serves POST /uplink. Its fields are set once before serving.
type Handler struct {
	Stream    Stream    // required
	Downlinks Downlinks // nil: never answers with a downlink
	// Credentialed, when set, names the devices that must use DTLS: a
	// plain-CoAP uplink naming one gets 4.01 (nil: no such devices).
	Credentialed DeviceSet
	// Registered, when set (AUTO_REGISTER=false), names the devices that
	// may send at all: an uplink naming any other ID gets 4.03 and creates
	// nothing (nil: any valid ID is accepted and registers itself).
	Registered DeviceSet
	Dedup      *Dedup // nil: only the transport's own detection (the lean path's in-flight set, go-coap's per-session cache for CoAPS)
	// Refusals remembers the keys of refused requests of known devices
	// (never strict: a flood of them only pushes out older ones), so that
	// a retransmission gets the same answer and no second error entry.
	// nil: every copy logs one.
	Refusals *Dedup
	Logger   *slog.Logger
	Metrics  *Metrics
	// MaxPayload bounds the payload (default DefaultMaxPayload).
	MaxPayload int
	// Now and NewID are injected so tests control time and IDs.
	Now   func() time.Time
	NewID func() uuid.UUID

	lastFullLog  atomic.Int64 // unix ns of the last stream-refusal warning
	lastEntryLog atomic.Int64 // unix ns of the last failed-entry warning
}

// ServeCOAP implements mux.Handler for plain CoAP: the device is named by
// the payload.
func (h *Handler) ServeCOAP(w mux.ResponseWriter, r *mux.Message) {
	h.serveMux(w, r, "")
}

// Secure returns the handler for CoAPS, where identity(conn) is the DTLS PSK
// identity of the peer.
func (h *Handler) Secure(identity func(mux.Conn) string) mux.Handler {
	return mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) {
		h.serveMux(w, r, identity(w.Conn()))
	})
}

// serveMux adapts go-coap's mux (CoAPS, and NewUDPServer) to serve.
func (h *Handler) serveMux(w mux.ResponseWriter, r *mux.Message, identity string) {
	if bad, ok := unknownCritical(r.Options()); ok {
		// As on the lean path (§5.4.1): go-coap refuses the options it
		// does not know, not those it knows and we do not process. A NON
		// is rejected without an answer.
		h.Metrics.reject("bad_option")
		if r.Type() == message.Confirmable {
			_ = w.SetResponse(codes.BadOption, message.TextPlain, strings.NewReader("critical option "+strconv.Itoa(int(bad))+" not processed"))
		}
		return
	}
	req := request{ctx: r.Context(), code: r.Code(), options: r.Options(), mid: r.MessageID(),
		token: r.Token(), remote: w.Conn().RemoteAddr()}
	var resp response
	if payload, err := r.ReadBody(); err != nil {
		h.Metrics.reject("undecodable")
		resp = reply(codes.BadRequest, ErrUndecodable.Error())
		h.Metrics.observe(resp.code, 0)
	} else {
		req.payload = payload
		if resp = h.serve(&req, identity); resp.code == 0 {
			// A copy of an uplink being processed: no answer of its own
			// (go-coap then sends an empty ACK). Over DTLS a copy comes
			// through a second session only after a handshake, by which
			// time the first is answered: this is for completeness.
			return
		}
	}
	var body io.ReadSeeker
	if resp.payload != nil {
		body = bytes.NewReader(resp.payload)
	}
	if resp.option.ID != 0 {
		_ = w.SetResponse(resp.code, resp.format, body, resp.option)
	} else {
		_ = w.SetResponse(resp.code, resp.format, body)
	}
}

// serve is the uplink logic both transports share: the answer to req.
func (h *Handler) serve(req *request, identity string) response {
	start := h.now()
	resp := h.handle(req, identity, start)
	if resp.code != 0 {
		h.Metrics.observe(resp.code, time.Since(start))
	}
	return resp
}

func (h *Handler) handle(r *request, identity string, now time.Time) response {
	if r.options.HasOption(message.ProxyURI) || r.options.HasOption(message.ProxyScheme) {
		// RFC 7252 §5.7.2: a forward-proxy request to an endpoint that
		// is no proxy.
		h.Metrics.reject("proxy")
		return reply(codes.ProxyingNotSupported, "not a proxy")
	}
	if path, _ := r.options.Path(); path != "/uplink" {
		return reply(codes.NotFound, "use POST /uplink")
	}
	if r.code != codes.POST {
		return reply(codes.MethodNotAllowed, "use POST /uplink")
	}
	if r.options.HasOption(message.ContentFormat) {
		if cf, err := r.options.ContentFormat(); err != nil || cf != message.AppOctets {
			h.Metrics.reject("content_format")
			return reply(codes.UnsupportedMediaType, "payload must be application/octet-stream (42) or have no Content-Format")
		}
	}
	if r.options.HasOption(message.IfMatch) || r.options.HasOption(message.IfNoneMatch) {
		// §5.10.8: /uplink has no representation, so If-Match (some
		// current one) and If-None-Match (none exists: the resource
		// does) cannot hold.
		h.Metrics.reject("precondition")
		return reply(codes.PreconditionFailed, "/uplink takes no conditional requests")
	}
	if r.options.HasOption(message.Accept) {
		// §5.10.4: an answer carries a Downlink (42) or nothing.
		if cf, err := r.options.Accept(); err != nil || cf != message.AppOctets {
			h.Metrics.reject("accept")
			return reply(codes.NotAcceptable, "answers are application/octet-stream (42)")
		}
	}
	limit := h.maxPayload()
	// An uplink is one datagram. A Block1 request (RFC 7959) means the client
	// splits a payload it thinks too big for one: refuse it as too large
	// rather than buffer blocks for it (the lean path has no block-wise
	// transfer; the DTLS server turns it off, dtls/server.go).
	if len(r.payload) > limit || r.options.HasOption(message.Block1) {
		h.Metrics.reject("too_large")
		// RFC 7252 §5.9.2.9: a 4.13 may carry Size1, the largest size accepted.
		resp := reply(codes.RequestEntityTooLarge, ErrTooLarge.Error())
		resp.option = message.Option{ID: message.Size1, Value: uint32Bytes(limit)}
		return resp
	}
	payload := r.payload

	u := new(nbiotv1.Uplink)
	deviceID, err := Decode(payload, identity, u)
	if err != nil {
		return h.refuse(r, deviceID, identity, err, now)
	}

	// Copies of one uplink share this key: Dedup's (restored from the live
	// log after a restart), the database's (the uplink's Key) and, encoded
	// (stream.IDOf), the live-log entry's, by which the stream on NATS_URL
	// recognises a copy that reached another instance (its Duplicates
	// window).
	msgKey := stream.MsgKey(deviceID, r.mid, r.token, payload)
	key := dedupKey(msgKey)
	accept := func() uplink.Accepted {
		return uplink.Accepted{ID: h.newID(), DeviceID: deviceID, ReceivedAt: now, Uplink: u, Authenticated: identity != "", Key: msgKey}
	}
	if h.Dedup != nil {
		hit, found, busy := h.Dedup.begin(key, now)
		switch {
		case found:
			// A retransmission from another address (RFC 7252 §4.5), or
			// one of an uplink accepted before a restart: the same
			// answer, and nothing stored or logged twice (admission,
			// below, is not asked again); what is new goes only to a
			// sender today's lists admit.
			h.Metrics.Duplicates.Inc()
			admitted := h.mayLog(deviceID, identity)
			if admitted {
				h.notifyRetransmission(deviceID, now, u.GetUplinkCount(), hit.seq, hit.copies)
			}
			if hit.restored && h.Downlinks != nil && admitted {
				// What it was answered before the restart is not known:
				// a pending configuration is what it would have carried.
				hit.answer, _, _ = h.Downlinks.ForUplink(accept())
			}
			return answerWith(hit.code, hit.answer)
		case busy:
			// Another copy is being processed right now: its answer
			// goes to the device (to its address, with this message ID),
			// and a later copy gets the remembered one. §4.5 lets a
			// duplicate be dropped.
			h.Metrics.Duplicates.Inc()
			return response{}
		}
		defer h.Dedup.end(key)
	}
	// Admission is asked after Dedup: a retransmission of an accepted
	// uplink got its answer above, whatever the lists say now (credentials
	// added, the device deleted, the lists not loaded after a restart). A
	// refusal would end the exchange, and the device's next try, a new
	// request, would be stored a second time.
	if resp, refused := h.admit(r, deviceID, identity, now); refused {
		return resp
	}
	if h.Dedup != nil && h.Dedup.Full(now, identity != "") {
		return h.unavailable(deviceID, now, errDedupFull)
	}

	id := stream.IDOf(msgKey)
	accepted := accept()
	ctx := r.ctx
	if err := h.Stream.PublishUplink(ctx, accepted, payload); err != nil {
		return h.unavailable(deviceID, now, err)
	}
	var (
		answer        []byte
		configApplied *bool
		downlink      *livelog.Entry
	)
	if h.Downlinks != nil {
		answer, configApplied, downlink = h.Downlinks.ForUplink(accepted)
	}
	entry := livelog.Uplink(deviceID, now, u, configApplied)
	if h.Stream.Behind() {
		// The uplink is durable: it is answered now, while its entry is
		// stored (its position reaches Dedup then, for the retransmission
		// reports). Remembered first, so that the position has its slot.
		h.Metrics.Accepted.Inc()
		var done func(uint64)
		if h.Dedup != nil {
			if h.Dedup.remember(key, codes.Changed, answer, 0, now) {
				h.Metrics.DedupEvictions.Inc()
			}
			done = func(seq uint64) { h.Dedup.setSeq(key, seq) }
		}
		if err := h.Stream.LogBehind(entry, id, done); err != nil {
			h.entryFailed(deviceID, now, err)
		}
		if downlink != nil {
			h.Stream.LogAsync(downlink)
		}
		return answerWith(codes.Changed, answer)
	}
	seq, ldup, err := h.Stream.Log(ctx, entry, id)
	switch {
	case err != nil && !h.Stream.Stores():
		// Without a storage stream nothing was accepted yet.
		return h.unavailable(deviceID, now, err)
	case err != nil:
		// The uplink is durable and will be stored: it is accepted. A 5.03
		// would end the exchange, and the device's next try, a new
		// request, would be stored again. Its entry is sent once more
		// without waiting; if that fails too the live log goes without it.
		h.Metrics.Accepted.Inc()
		h.entryFailed(deviceID, now, err)
		h.Stream.LogAsyncID(entry, id)
		if downlink != nil {
			h.Stream.LogAsync(downlink)
		}
	case ldup:
		// The live log had this entry's ID (NATS_URL): the uplink was
		// accepted before, by another instance.
		h.Metrics.Duplicates.Inc()
		h.notifyRetransmission(deviceID, now, u.GetUplinkCount(), seq, 0)
	default:
		h.Metrics.Accepted.Inc()
		if downlink != nil {
			h.Stream.LogAsync(downlink)
		}
	}
	if h.Dedup != nil && h.Dedup.remember(key, codes.Changed, answer, seq, now) {
		h.Metrics.DedupEvictions.Inc()
	}
	return answerWith(codes.Changed, answer)
}

// entryFailed counts and logs (at most once a second) an accepted uplink
// whose live-log entry the stream refused.
func (h *Handler) entryFailed(deviceID string, now time.Time, err error) {
	h.Metrics.EntriesFailed.Inc()
	if last := h.lastEntryLog.Load(); now.UnixNano()-last >= int64(time.Second) && h.lastEntryLog.CompareAndSwap(last, now.UnixNano()) {
		h.Logger.Warn("uplink accepted, its live-log entry was not (logged at most once a second; see nbiot_livelog_entries_failed_total)",
			"device", deviceID, "err", err)
	}
}

// unavailable answers 5.03 with Max-Age: the stream did not take the
// uplink (full, or NATS unreachable), so it was not accepted and the
// device keeps it and retries.
func (h *Handler) unavailable(deviceID string, now time.Time, err error) response {
	reason := "stream_unavailable"
	switch {
	case errors.Is(err, stream.ErrFull):
		reason = "stream_full"
	case errors.Is(err, errDedupFull):
		reason = "dedup_full"
	case errors.Is(err, stream.ErrTooManyDevices):
		reason = "stream_devices"
	case errors.Is(err, errCredentialsUnknown):
		reason = "credentials_unknown"
	case errors.Is(err, errRegisteredUnknown):
		reason = "registered_unknown"
	}
	h.Metrics.reject(reason)
	// During an outage this happens for every uplink: log at most once a
	// second, the metric counts them all.
	if last := h.lastFullLog.Load(); now.UnixNano()-last >= int64(time.Second) && h.lastFullLog.CompareAndSwap(last, now.UnixNano()) {
		h.Logger.Warn("uplinks refused with 5.03: the stream did not take them (logged at most once a second; see nbiot_uplinks_rejected_total)",
			"device", deviceID, "reason", reason, "err", err)
	}
	resp := reply(codes.ServiceUnavailable, "busy, retry later")
	resp.option = message.Option{ID: message.MaxAge, Value: uint32Bytes(RetryAfter)}
	return resp
}

// notifyRetransmission tells subscribers that asked for them that a copy
// of the uplink at seq arrived. It is not retained: the contract promises
// no second live-log entry for a retransmission.
func (h *Handler) notifyRetransmission(deviceID string, now time.Time, count uint32, seq uint64, copies int) {
	if seq == 0 {
		return
	}
	h.Stream.Notify(livelog.Retransmission(deviceID, now, count, seq, copies))
}

// answerWith is an accepted uplink's answer: empty, or a Downlink.
func answerWith(code codes.Code, answer []byte) response {
	return response{code: code, format: message.AppOctets, payload: answer}
}

// admit decides whether deviceID may send over this transport (identity
// "" = plain CoAP): with AUTO_REGISTER off only registered devices may,
// and a device with DTLS credentials only over DTLS. A refusal stores,
// logs and hands out nothing.
func (h *Handler) admit(r *request, deviceID, identity string, now time.Time) (response, bool) {
	if h.Registered != nil {
		switch registered, known := h.Registered.Has(deviceID); {
		case !known:
			return h.unavailable(deviceID, now, errRegisteredUnknown), true
		case !registered:
			// Nobody owns this ID's live log: nothing goes on it.
			h.Metrics.reject("unregistered")
			h.Logger.Debug("uplink refused: device not registered (AUTO_REGISTER=false)", "device", deviceID, "remote", r.remote)
			return reply(codes.Forbidden, ErrUnregistered.Error()), true
		}
	}
	if identity == "" && h.Credentialed != nil {
		switch required, known := h.Credentialed.Has(deviceID); {
		case !known:
			return h.unavailable(deviceID, now, errCredentialsUnknown), true
		case required:
			// Anyone can name any device on plain CoAP: a device with a key
			// speaks only over DTLS. Nothing is stored, logged or handed out.
			h.Metrics.reject("unauthorized")
			h.Logger.Debug("uplink refused: device has DTLS credentials", "device", deviceID, "remote", r.remote)
			return reply(codes.Unauthorized, ErrUnauthorized.Error()), true
		}
	}
	return response{}, false
}

// mayLog reports whether a rejection may go on deviceID's live log: only
// when the sender could have been that device (admit would let it send).
func (h *Handler) mayLog(deviceID, identity string) bool {
	if h.Registered != nil {
		if registered, _ := h.Registered.Has(deviceID); !registered {
			return false
		}
	}
	if identity == "" && h.Credentialed != nil {
		if required, known := h.Credentialed.Has(deviceID); required || !known {
			return false
		}
	}
	return true
}

// firstRefusal reports whether r is the first copy of a request refused
// within EXCHANGE_LIFETIME (by its key, as Dedup keys uplinks), and
// remembers it. The answer needs no remembering: a copy is refused alike.
func (h *Handler) firstRefusal(deviceID string, r *request, now time.Time) bool {
	if h.Refusals == nil {
		return true
	}
	key := dedupKey(stream.MsgKey(deviceID, r.mid, r.token, r.payload))
	_, found, busy := h.Refusals.begin(key, now)
	if found || busy {
		return false
	}
	defer h.Refusals.end(key)
	h.Refusals.remember(key, codes.BadRequest, nil, 0, now)
	return true
}

// refuse answers a rejected uplink and, when the device is known, puts the
// rejection on that device's live log so its owner sees why.
func (h *Handler) refuse(r *request, deviceID, identity string, err error, now time.Time) response {
	code := codes.BadRequest
	reason := "undecodable"
	switch {
	case errors.Is(err, ErrIdentity):
		code, reason = codes.Forbidden, "identity"
	case errors.Is(err, ErrDeviceID):
		reason = "device_id"
	case errors.Is(err, ErrInvalid):
		reason = "invalid"
	}
	h.Metrics.reject(reason)
	if deviceID != "" {
		// Debug, not Info: a device (or anyone naming it) can send these
		// at line rate; the owner sees them on the live log, operators in
		// nbiot_uplinks_rejected_total.
		h.Logger.Debug("uplink rejected", "device", deviceID, "remote", r.remote, "err", err)
		if h.mayLog(deviceID, identity) && h.firstRefusal(deviceID, r, now) {
			h.Stream.LogAsync(livelog.Error(deviceID, now, "Rejected uplink: "+err.Error()))
		}
	} else {
		h.Logger.Debug("uplink rejected", "remote", r.remote, "err", err)
	}
	return reply(code, err.Error())
}

// reply is a response with a diagnostic payload (RFC 7252 §5.5.2).
func reply(code codes.Code, diagnostic string) response {
	return response{code: code, format: message.TextPlain, payload: []byte(diagnostic)}
}

func uint32Bytes(v int) []byte {
	buf := make([]byte, 4)
	n, _ := message.EncodeUint32(buf, uint32(v))
	return buf[:n]
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

func (h *Handler) newID() uuid.UUID {
	if h.NewID != nil {
		return h.NewID()
	}
	return uuid.New()
}

func (h *Handler) maxPayload() int {
	if h.MaxPayload > 0 {
		return h.MaxPayload
	}
	return DefaultMaxPayload
}
