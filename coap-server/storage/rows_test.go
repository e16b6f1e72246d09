package storage_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/storage/storagetest"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

func TestRowsOfMergesPerDevice(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := storagetest.Rec("B", t0.Add(2*time.Second), storagetest.FullUplink("B", 2))
	b := storagetest.Rec("B", t0, storagetest.FullUplink("B", 1))
	b.Uplink.Config.FwVersion = "older"
	c := storagetest.Rec("A", t0.Add(time.Second), &nbiotv1.Uplink{})
	rows := storage.RowsOf([]uplink.Accepted{a, b, c, a})
	if len(rows.Devices) != 2 || rows.Devices[0].DevID != "A" || rows.Devices[1].DevID != "B" ||
		!rows.Devices[1].LastSeenAt.Equal(t0.Add(2*time.Second)) {
		t.Errorf("devices %+v", rows.Devices)
	}
	if len(rows.Configs) != 1 || *rows.Configs[0].FwVersion != "fw-2.0.1" {
		t.Errorf("configs %+v: the latest report must win", rows.Configs)
	}
	if len(rows.Activity) != 3 || len(rows.Sensors) != 10 {
		t.Errorf("activity %d sensors %d, want 3 and 10 (duplicate record written once)", len(rows.Activity), len(rows.Sensors))
	}
}

// FuzzRowsOf: whatever a device sends that protobuf decodes (ingest's
// checks aside), every sensor_data row is a JSON object and the counts add
// up, so a batch never fails on our own encoding.
func FuzzRowsOf(f *testing.F) {
	for _, u := range []*nbiotv1.Uplink{storagetest.FullUplink("F1", 1), {DeviceId: "F2"}, {WifiAps: []*nbiotv1.WifiAp{{Bssid: []byte{1}}}}} {
		b, _ := proto.Marshal(u)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		u := new(nbiotv1.Uplink)
		if proto.Unmarshal(payload, u) != nil {
			return
		}
		rows := storage.RowsOf([]uplink.Accepted{{ID: uuid.New(), DeviceID: "F", ReceivedAt: time.Now(), Uplink: u}})
		if len(rows.Activity) != 1 || len(rows.Devices) != 1 {
			t.Fatalf("rows %+v", rows)
		}
		for _, s := range rows.Sensors {
			var m map[string]any
			if err := json.Unmarshal(s.Data, &m); err != nil {
				t.Fatalf("%s data %s: %v", s.DataType, s.Data, err)
			}
		}
		if _, err := json.Marshal(rows.Sensors); err != nil {
			t.Fatalf("marshal: %v", err)
		}
	})
}
