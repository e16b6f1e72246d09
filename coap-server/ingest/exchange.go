package ingest

import (
	"context"
	"fmt"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// request is what the uplink logic reads of a CoAP request. Both
// transports fill it: go-coap's mux (CoAPS) and the lean datagram path
// (plain CoAP), so the two answer alike.
type request struct {
	ctx     context.Context
	code    codes.Code
	options message.Options
	payload []byte
	mid     int32
	token   []byte
	remote  fmt.Stringer // for debug logs; formatted only when logged
}

// response is the uplink logic's answer; the transport adds type, message
// ID and token (RFC 7252 §5.2). Content-Format is set when payload is not
// nil; option, when its ID is not 0, is the one other option (Size1 or
// Max-Age). Code 0 is no answer at all: a copy of an uplink that is being
// processed, whose answer is on its way.
type response struct {
	code    codes.Code
	format  message.MediaType
	payload []byte
	option  message.Option
}
