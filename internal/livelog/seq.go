package livelog

import (
	"strconv"
	"time"
)

// AppendSeq appends to dst the frame of an entry at position seq: the
// entry's JSON (as Marshal encodes it, an object) with "seq" as its first
// key. The stream stores entries without seq, since their position is
// known only once stored; every frame is made by this one splice.
func AppendSeq(dst []byte, seq uint64, entry []byte) []byte {
	if len(entry) < 2 || entry[0] != '{' {
		return append(dst, entry...)
	}
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	if entry[1] != '}' {
		dst = append(dst, ',')
	}
	return append(dst, entry[1:]...)
}

// Retransmission builds the report that a copy of uplink #count, whose
// entry is at seq, arrived again (RFC 7252 §4.5). copies counts the copies seen,
// the original included, when known (0 = unknown). It is sent only to
// subscribers that ask for it and is not retained: a retransmission makes
// no second live-log entry.
func Retransmission(deviceID string, now time.Time, count uint32, seq uint64, copies int) *Entry {
	r := RetransmissionData{OfSeq: seq}
	if copies > 0 {
		r.Count = &copies
	}
	return Status(deviceID, now, "Retransmission of uplink #"+strconv.FormatUint(uint64(count), 10), map[string]any{"retransmission": r})
}

// RetransmissionData is data.retransmission of a retransmission report.
type RetransmissionData struct {
	OfSeq uint64 `json:"of_seq"`
	Count *int   `json:"count,omitempty"`
}
