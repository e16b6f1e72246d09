package upstream

import (
	"encoding/json"
	"errors"
)

// head is what the relay reads from an upstream frame: the device it is
// for, its stream position and whether it is coap-server's
// recovered:false status. The rest is forwarded untouched.
type head struct {
	device string
	seq    uint64
	hasSeq bool
	reset  bool // coap-server's {"type":"status",...,"data":{"recovered":false}}, without seq
	// coap-server's {"type":"status",...,"data":{"position":P}}, without
	// seq: the link has every entry up to P (position=1).
	position    uint64
	hasPosition bool
	// notice: coap-server's retransmission report, a status with
	// data.retransmission and without seq (not retained: the browser can
	// go without it).
	notice bool
}

var errNoDevice = errors.New("frame has no deviceId")

// peek decodes the head of an encoded live-log entry.
func peek(b []byte) (head, error) {
	// Only deviceId and seq must have their types: the rest is looked at
	// leniently, so a frame the relay need not understand is forwarded.
	var f struct {
		DeviceID string          `json:"deviceId"`
		Seq      *uint64         `json:"seq"`
		Type     json.RawMessage `json:"type"`
		Data     json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return head{}, err
	}
	if f.DeviceID == "" {
		return head{}, errNoDevice
	}
	h := head{device: f.DeviceID}
	if f.Seq != nil {
		h.seq, h.hasSeq = *f.Seq, true
		return h, nil
	}
	var typ string
	if json.Unmarshal(f.Type, &typ) == nil && typ == "status" && len(f.Data) > 0 {
		var d struct {
			Recovered      *bool           `json:"recovered"`
			Position       *uint64         `json:"position"`
			Retransmission json.RawMessage `json:"retransmission"`
		}
		if json.Unmarshal(f.Data, &d) == nil {
			h.reset = d.Recovered != nil && !*d.Recovered
			h.notice = len(d.Retransmission) > 0 && string(d.Retransmission) != "null"
			if d.Position != nil {
				h.position, h.hasPosition = *d.Position, true
			}
		}
	}
	return h, nil
}
