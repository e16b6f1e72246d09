package uplink

import (
	"bytes"
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
	return Accepted{ID: uuid.New(), DeviceID: "DEV-1", ReceivedAt: time.Unix(1700000000, 123456789).UTC(), Uplink: u, Authenticated: true}, payload
}

func TestMessageRoundTrip(t *testing.T) {
	a, payload := sample(t)
	got, err := Unmarshal(AppendMessage(nil, a, payload))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != a.ID || got.DeviceID != a.DeviceID || !got.ReceivedAt.Equal(a.ReceivedAt) || !got.Authenticated ||
		!proto.Equal(got.Uplink, a.Uplink) {
		t.Fatalf("round trip: got %+v, want %+v", got, a)
	}
}

func TestUnmarshalRefuses(t *testing.T) {
	a, payload := sample(t)
	good := AppendMessage(nil, a, payload)
	bad := map[string][]byte{
		"empty":           nil,
		"short":           good[:10],
		"version":         append([]byte{2}, good[1:]...),
		"device too long": func() []byte { b := bytes.Clone(good); b[26] = 200; return b }(),
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
