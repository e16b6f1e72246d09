package downlink

import (
	"encoding/json"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/nbiot-live/nbiot-live/internal/livelog"
)

func TestConfigFromJSON(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"intervals", `{"heartbeat_interval":600,"gnss_interval":0,"wifi_scan_interval":3600}`, true},
		{"versions", `{"fw_version":"1.2.3"}`, true},
		{"config_version is ours", `{"heartbeat_interval":1,"config_version":99}`, true},
		{"unknown key", `{"heartbeat":600}`, false},
		{"negative", `{"heartbeat_interval":-1}`, false},
		{"too big", `{"heartbeat_interval":4294967296}`, false},
		{"fraction", `{"heartbeat_interval":1.5}`, false},
		{"string number", `{"heartbeat_interval":"600"}`, false},
		{"empty", `{}`, false},
		{"only config_version", `{"config_version":3}`, false},
		{"array", `[]`, false},
		{"null", `null`, false},
		{"NUL in version", `{"fw_version":"a\u0000b"}`, false},
		{"trailing", `{"gnss_interval":1} {}`, false},
		{"stray closing brace", `{"fw_version":""}}`, false},
		{"stray closing bracket", `{"gnss_interval":1}]`, false},
		{"trailing space", "{\"gnss_interval\":1} \n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ConfigFromJSON([]byte(tc.in), 42)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
			if err == nil && c.GetConfigVersion() != 42 {
				t.Fatalf("config_version %d, want the row id 42", c.GetConfigVersion())
			}
		})
	}
	if c, err := ConfigFromJSON([]byte(`{"gnss_interval":1}`), 1<<32); err != nil || c.GetConfigVersion() != 1 {
		t.Errorf("id 2^32: %v, %v; want config_version 1 (counted from 1 again)", c, err)
	}
	if _, err := ConfigFromJSON([]byte(`{"gnss_interval":1}`), 0); err == nil {
		t.Error("id 0 accepted")
	}
}

// FuzzConfigFromJSON: whatever the frontend stored, conversion never panics,
// and an accepted config encodes and carries the row id.
func FuzzConfigFromJSON(f *testing.F) {
	for _, s := range []string{
		`{"heartbeat_interval":600,"gnss_interval":0}`, `{"fw_version":"1.0","hw_version":"rev-b"}`,
		`{"wifi_scan_interval":4294967295}`, `{"x":1}`, `[1,2]`, `{"heartbeat_interval":1e3}`, ``,
	} {
		f.Add([]byte(s), int64(7))
	}
	f.Fuzz(func(t *testing.T, raw []byte, id int64) {
		c, err := ConfigFromJSON(raw, id)
		if err != nil {
			return
		}
		if !json.Valid(raw) || c.GetConfigVersion() != livelog.ConfigVersion(id) || id < 1 {
			t.Fatalf("accepted %q (id %d) as %v", raw, id, c)
		}
		if _, err := proto.Marshal(c); err != nil {
			t.Fatalf("accepted config does not encode: %v", err)
		}
	})
}
