package ingest

import (
	"errors"
	"strconv"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/noresponse"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
)

const (
	// maxOptions is how many options a request may carry; an uplink
	// carries two or three (Uri-Path, Content-Format). A request with more
	// is well formed but not processed: 4.02 Bad Option.
	maxOptions = 32
	// amplification bounds an error answer on plain CoAP to this many
	// times the request's size, whose source anyone can spoof (RFC 7252
	// §11.3; 3 is the factor RFC 9000 §8 and RFC 9175 §2.4 use): past it,
	// the diagnostic text is left out.
	amplification = 3
)

// exchange is one worker's scratch space: decoding and encoding reuse it,
// so answering a datagram allocates only what the uplink logic does.
type exchange struct {
	s    *LeanServer
	msg  message.Message
	opts [maxOptions]message.Option
	out  [2]message.Option
	cf   [4]byte
	wbuf []byte
}

func newExchange(s *LeanServer) *exchange {
	return &exchange{s: s, wbuf: make([]byte, 0, 1536)}
}

// serve answers one datagram following RFC 7252 §4 and §5.
func (ex *exchange) serve(d *datagram) {
	m := &ex.msg
	m.Options = ex.opts[:0]
	if _, err := coder.DefaultCoder.Decode(d.data, m); err != nil {
		ex.undecodable(d, err)
		return
	}
	con := m.Type == message.Confirmable
	switch class := m.Code >> 5; {
	case m.Code == codes.Empty:
		// §4.3: an Empty CON is a CoAP ping, answered with RST; an Empty
		// message with a token, options or payload is a format error
		// (§4.1), also rejected with RST. An Empty NON is not allowed
		// (§4.3) and is ignored.
		if con {
			ex.s.m.pings.Inc()
			ex.reset(d, m.MessageID)
		} else {
			ex.s.m.ignored.Inc()
		}
		return
	case class != 0:
		// A response (classes 2, 4, 5: we sent no request) or a reserved
		// class (1, 6, 7): we lack the context to process it, so a CON is
		// rejected with RST and a NON ignored (§4.2, §4.3).
		ex.s.m.ignored.Inc()
		if con {
			ex.reset(d, m.MessageID)
		}
		return
	}
	if bad, ok := unknownCritical(m.Options); ok {
		// §5.4.1: an unrecognised critical option in a CON request is
		// answered 4.02 Bad Option; in a NON it rejects the message (§4.3).
		ex.s.m.badOption.Inc()
		if con {
			ex.answer(d, con, response{code: codes.BadOption, format: message.TextPlain,
				payload: []byte("critical option " + strconv.Itoa(int(bad)) + " not processed")})
		}
		return
	}
	req := request{ctx: ex.s.ctx, code: m.Code, options: m.Options, payload: m.Payload,
		mid: m.MessageID, token: m.Token, remote: d}
	resp := ex.s.h.serve(&req, "")
	if resp.code == 0 {
		return // a copy of an uplink being processed: its answer is on the way
	}
	if suppressed(m.Options, resp.code) {
		// RFC 7967: the client asked not to hear this class of answer. A
		// CON still gets its empty ACK (§4.2); a NON gets nothing.
		if con {
			ex.write(d, message.Message{Type: message.Acknowledgement, Code: codes.Empty, MessageID: m.MessageID})
		}
		return
	}
	ex.answer(d, con, resp)
}

// undecodable answers a datagram Decode refused (err). A request with
// more options than maxOptions is well formed: a CON gets 4.02 Bad Option
// (§5.4.1: options it cannot process), a NON nothing. Anything else is a
// message format error (§4.2): a CON is rejected with a matching RST, a
// NON silently ignored (§4.3). receive checked the header, so the type,
// code, message ID and token length are read.
func (ex *exchange) undecodable(d *datagram, err error) {
	con := message.Type(d.data[0]>>4&3) == message.Confirmable
	code := codes.Code(d.data[1])
	if errors.Is(err, message.ErrOptionsTooSmall) && code != codes.Empty && code>>5 == 0 {
		ex.s.m.badOption.Inc()
		if con {
			// Decode sets no token when the options fail: it is read here.
			ex.msg.Token = d.data[4 : 4+d.key.tkl]
			ex.msg.MessageID = int32(d.key.mid)
			ex.answer(d, con, response{code: codes.BadOption})
		}
		return
	}
	ex.s.m.malformed.Inc()
	if con {
		ex.reset(d, int32(d.key.mid))
	}
}

// answer sends resp: piggybacked on the ACK of a CON (§5.2.1), in a NON
// with a new message ID for a NON (§5.2.3); the token is echoed (§5.3.2).
func (ex *exchange) answer(d *datagram, con bool, resp response) {
	out := message.Message{Code: resp.code, Token: ex.msg.Token, Payload: resp.payload,
		Type: message.Acknowledgement, MessageID: ex.msg.MessageID, Options: ex.options(resp)}
	if !con {
		out.Type, out.MessageID = message.NonConfirmable, int32(uint16(ex.s.mid.Add(1)))
	}
	if resp.code >= codes.BadRequest && len(resp.payload) > 0 {
		if size, err := coder.DefaultCoder.Size(out); err == nil && size > amplification*len(d.data) {
			resp.payload = nil
			out.Payload, out.Options = nil, ex.options(resp)
			ex.s.m.shortened.Inc()
		}
	}
	ex.write(d, out)
}

// options are resp's, in ascending number (§3.1): Content-Format (12)
// when it has a payload, then Max-Age (14) or Size1 (60).
func (ex *exchange) options(resp response) message.Options {
	opts := ex.out[:0]
	if resp.payload != nil {
		n, _ := message.EncodeUint32(ex.cf[:], uint32(resp.format))
		opts = append(opts, message.Option{ID: message.ContentFormat, Value: ex.cf[:n]})
	}
	if resp.option.ID != 0 {
		opts = append(opts, resp.option)
	}
	return opts
}

// reset sends an RST matching mid (§4.2): Empty, no token.
func (ex *exchange) reset(d *datagram, mid int32) {
	ex.s.m.resets.Inc()
	ex.write(d, message.Message{Type: message.Reset, Code: codes.Empty, MessageID: mid})
}

func (ex *exchange) write(d *datagram, m message.Message) {
	size, err := coder.DefaultCoder.Size(m)
	if err != nil {
		ex.s.m.writeErrors.Inc()
		return
	}
	if cap(ex.wbuf) < size {
		ex.wbuf = make([]byte, size)
	}
	buf := ex.wbuf[:size]
	if _, err := coder.DefaultCoder.Encode(m, buf); err != nil {
		ex.s.m.writeErrors.Inc()
		return
	}
	// Out of flight before the answer leaves: a copy sent after the peer
	// saw it must be answered again (from Dedup), not taken for in flight.
	ex.s.leave(d)
	ex.s.write(buf, d.from)
}

// unknownCritical returns the first critical option (odd number, §5.4.6)
// that is not processed here: one go-coap does not know, one with an
// illegal length (§5.4.3), one of those below, or a second occurrence of
// one that is not repeatable (§5.4.5: it is treated as unrecognised).
// Those the handler answers itself (Proxy-Uri, Proxy-Scheme: 5.05;
// If-Match, If-None-Match: 4.12; Accept: 4.06; Block1: 4.13) pass.
func unknownCritical(opts message.Options) (message.OptionID, bool) {
	var prev message.OptionID
	for _, o := range opts {
		if o.ID%2 == 0 {
			continue
		}
		switch o.ID {
		case message.QBlock1, message.QBlock2, message.Block2:
			// Block-wise answers (RFC 7959, RFC 9177) are not offered:
			// an answer is one datagram.
			return o.ID, true
		}
		if _, known := message.CoapOptionDefs[o.ID]; !known || !message.VerifyOptLen(o.ID, len(o.Value)) {
			return o.ID, true
		}
		if o.ID == prev && !repeatable(o.ID) {
			return o.ID, true
		}
		prev = o.ID
	}
	return 0, false
}

// repeatable reports whether a critical option may occur more than once
// (RFC 7252 §5.10 table 4).
func repeatable(id message.OptionID) bool {
	return id == message.IfMatch || id == message.URIPath || id == message.URIQuery
}

// suppressed reports whether the request's No-Response option (RFC 7967)
// asks for no answer of code's class.
func suppressed(opts message.Options, code codes.Code) bool {
	if !opts.HasOption(message.NoResponse) {
		return false
	}
	v, err := opts.GetUint32(message.NoResponse)
	return err == nil && noresponse.IsNoResponseCode(code, v) != nil
}
