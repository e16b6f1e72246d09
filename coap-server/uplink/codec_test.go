package uplink

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func sample(t testing.TB) (Accepted, []byte) {
	u := &nbiotv1.Uplink{DeviceId: "DEV-1", UplinkCount: 42, Temperature: proto.Float32(21.5),
		WifiAps: []*nbiotv1.WifiAp{{Bssid: []byte{1, 2, 3, 4, 5, 6}, Rssi: -60, Channel: 6}}}
	payload, err := proto.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	return Accepted{ID: uuid.New(), DeviceID: "DEV-1", ReceivedAt: time.Unix(1700000000, 123456789).UTC(), Uplink: u, Authenticated: true,
		Key: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}, payload
}

func TestMessageRoundTrip(t *testing.T) {
	a, payload := sample(t)
	got, err := Unmarshal(AppendMessage(nil, a, payload))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != a.ID || got.Key != a.Key || got.DeviceID != a.DeviceID || !got.ReceivedAt.Equal(a.ReceivedAt) || !got.Authenticated ||
		!proto.Equal(got.Uplink, a.Uplink) {
		t.Fatalf("round trip: got %+v, want %+v", got, a)
	}
}

// appendV1 writes the message of the previous version (no key), as a
// stream filled before an upgrade holds it.
func appendV1(a Accepted, payload []byte) []byte {
	b := []byte{1, 0}
	if a.Authenticated {
		b[1] = flagAuth
	}
	b = append(b, a.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(a.ReceivedAt.UnixNano()))
	b = append(b, byte(len(a.DeviceID)))
	b = append(b, a.DeviceID...)
	return append(b, payload...)
}

func TestUnmarshalReadsVersion1(t *testing.T) {
	a, payload := sample(t)
	got, err := Unmarshal(appendV1(a, payload))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != a.ID || got.Key != ([16]byte{}) || got.DeviceID != a.DeviceID || !got.ReceivedAt.Equal(a.ReceivedAt) ||
		!got.Authenticated || !proto.Equal(got.Uplink, a.Uplink) {
		t.Fatalf("version 1: got %+v, want %+v without a key", got, a)
	}
}

func TestUnmarshalRefuses(t *testing.T) {
	a, payload := sample(t)
	good := AppendMessage(nil, a, payload)
	bad := map[string][]byte{
		"empty":           nil,
		"short":           good[:10],
		"version":         append([]byte{3}, good[1:]...),
		"v2 short":        good[:headerLen-1],
		"device too long": func() []byte { b := bytes.Clone(good); b[headerLen-1] = 200; return b }(),
		"nil id":          AppendMessage(nil, Accepted{DeviceID: "D", ReceivedAt: a.ReceivedAt}, payload),
		"bad device":      AppendMessage(nil, Accepted{ID: a.ID, DeviceID: "a b", ReceivedAt: a.ReceivedAt}, payload),
		"bad protobuf":    AppendMessage(nil, Accepted{ID: a.ID, DeviceID: "D", ReceivedAt: a.ReceivedAt}, []byte{0xff}),
	}
	for name, b := range bad {
		if _, err := Unmarshal(b); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzUnmarshal: stream messages come from a NATS server other instances
// (or anyone with its credentials) also write to.
func FuzzUnmarshal(f *testing.F) {
	a, payload := sample(f)
	f.Add(AppendMessage(nil, a, payload))
	f.Add(appendV1(a, payload))
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Unmarshal(b)
		if err != nil {
			return
		}
		if got.Uplink == nil || got.DeviceID == "" {
			t.Fatal("accepted without uplink or device")
		}
	})
}
