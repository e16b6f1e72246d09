package sim

import (
	"testing"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

// realFrames are frames as coap-server encodes them (livelog is its encoder).
func realFrames(t testing.TB) [][]byte {
	t.Helper()
	d := NewDevice("SIM-0001", 1, 0)
	var out [][]byte
	for i := 0; i < 3; i++ {
		b, err := livelog.Uplink(d.ID, time.Unix(1700000000, 0), d.Next(), nil).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	b, err := livelog.Error("SIM-0001", time.Unix(1700000000, 0), "Rejected uplink: invalid field").Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return append(out, b)
}

func TestParseFrame(t *testing.T) {
	frames := realFrames(t)
	for i, b := range frames[:3] {
		key, kind := parseFrame(b)
		if kind != frameUplink || key != (frameKey{"SIM-0001", uint32(i + 1)}) {
			t.Errorf("frame %s: %v %v", b, key, kind)
		}
	}
	for name, tc := range map[string]struct {
		in   string
		want frameKind
	}{
		"error frame":      {string(frames[3]), frameOther},
		"status":           {`{"deviceId":"A","type":"status","data":{"uplink_count":1}}`, frameOther},
		"not json":         {`hello`, frameBad},
		"no device":        {`{"type":"uplink","data":{"uplink_count":1}}`, frameBad},
		"bad device":       {`{"deviceId":"a b","type":"uplink","data":{"uplink_count":1}}`, frameBad},
		"no count":         {`{"deviceId":"A","type":"uplink","data":{}}`, frameBad},
		"null data":        {`{"deviceId":"A","type":"uplink","data":null}`, frameBad},
		"negative count":   {`{"deviceId":"A","type":"uplink","data":{"uplink_count":-1}}`, frameBad},
		"array data":       {`{"deviceId":"A","type":"uplink","data":[1]}`, frameBad},
		"string count":     {`{"deviceId":"A","type":"uplink","data":{"uplink_count":"1"}}`, frameBad},
		"count 0 is valid": {`{"deviceId":"A","type":"uplink","data":{"uplink_count":0}}`, frameUplink},
	} {
		if _, kind := parseFrame([]byte(tc.in)); kind != tc.want {
			t.Errorf("%s: kind %v, want %v", name, kind, tc.want)
		}
	}
}

func FuzzParseFrame(f *testing.F) {
	for _, b := range realFrames(f) {
		f.Add(b)
	}
	f.Add([]byte(`{"deviceId":"A","type":"uplink","data":{"uplink_count":4294967295}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		key, kind := parseFrame(b)
		if kind != frameBad && !livelog.ValidDeviceID(key.device) {
			t.Fatalf("accepted device ID %q", key.device)
		}
	})
}

func frame(device string, count uint32) []byte {
	b, _ := (&livelog.Entry{DeviceID: device, Type: livelog.TypeUplink, Data: &livelog.UplinkData{UplinkCount: count}}).Marshal()
	return b
}

func TestMatcherPairsFramesWithSends(t *testing.T) {
	stats := new(Stats)
	now := time.Unix(1000, 0)
	m := newMatcher(stats, func(id string) bool { return id != "OTHER" }, 2*time.Second)
	m.now = func() time.Time { return now }

	// Two sends with the same key (the device rebooted in between): first
	// in, first out. The frame of the first arrives before its answer.
	a := m.expect("D", 1, now)
	b := m.expect("D", 1, now.Add(10*time.Millisecond))
	m.frame(frame("D", 1), now.Add(time.Millisecond))
	m.done(a, true)
	m.done(b, true)
	m.frame(frame("D", 1), now.Add(13*time.Millisecond))

	// A failed send needs no frame; an answered one without a frame is
	// missing once the frame wait has passed.
	c := m.expect("D", 2, now)
	m.done(c, false)
	e := m.expect("D", 3, now)
	m.done(e, true)
	m.frame(frame("OTHER", 9), now) // another sender's device: ignored
	m.frame(frame("D", 99), now)    // ours, but never sent: unexpected
	m.frame([]byte("garbage"), now) // unexpected

	m.expire(false)
	var r Result
	m.snapshot(&r)
	if r.Frames != 2 || r.Missing != 0 || r.Unexpected != 2 {
		t.Fatalf("frames %d missing %d unexpected %d, want 2 0 2", r.Frames, r.Missing, r.Unexpected)
	}
	now = now.Add(3 * time.Second)
	m.expire(false)
	m.snapshot(&r)
	if r.Missing != 1 || len(m.byKey) != 0 || m.waiting != 0 {
		t.Fatalf("missing %d, %d keys and %d waiting left", r.Missing, len(m.byKey), m.waiting)
	}
	stats.snapshot(&r)
	if r.Latency.N != 2 || r.Latency.Max != 3*time.Millisecond {
		t.Errorf("latency %+v, want 2 samples, max 3ms", r.Latency)
	}
}

func TestMatcherDrainReturnsWhenAllFramesArrived(t *testing.T) {
	m := newMatcher(new(Stats), func(string) bool { return true }, time.Hour)
	e := m.expect("D", 1, time.Now())
	m.done(e, true)
	done := make(chan struct{})
	go func() {
		m.drain()
		close(done)
	}()
	m.frame(frame("D", 1), time.Now())
	select { // with a one-hour frame wait, only the frame can end drain
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not return after the last frame arrived")
	}
}
