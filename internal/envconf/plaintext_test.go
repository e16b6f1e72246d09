package envconf

import (
	"net/url"
	"strings"
	"testing"
)

// A secret or a device's data never goes in clear to another machine
// unless ALLOW_PLAINTEXT says the network encrypts it; loopback is this
// side of it, and no name tells an encrypting private network (Fly's
// *.internal) from another (AWS's ec2.internal).
func TestPlaintext(t *testing.T) {
	for _, tc := range []struct {
		raw   string
		allow bool
		ok    bool
	}{
		{"ws://coap.example.com/ws", false, false},
		{"ws://10.0.0.7:8080/ws", false, false},
		{"ws://coap-server:8080/ws", false, false},
		{"ws://coap.example.com/ws", true, true},
		{"wss://coap.example.com/ws", false, true},
		{"ws://localhost:8080/ws", false, true},
		{"ws://LOCALHOST.:8080/ws", false, true},
		{"ws://127.0.0.2:8080/ws", false, true},
		{"ws://[::1]:8080/ws", false, true},
		{"ws://[::ffff:127.0.0.1]:8080/ws", false, true},
		{"ws://nbiot-coap.internal:8080/ws", false, false},
		{"ws://nbiot-coap.internal:8080/ws", true, true},
		{"ws://internal.example.com/ws", false, false},
	} {
		u, err := url.Parse(tc.raw)
		if err != nil {
			t.Fatal(err)
		}
		err = Plaintext("UPSTREAM_URL", u, "ws", "wss", tc.allow)
		if (err == nil) != tc.ok {
			t.Errorf("%s (allow %v): %v, want ok=%v", tc.raw, tc.allow, err, tc.ok)
		}
		if err != nil && (!strings.HasPrefix(err.Error(), "UPSTREAM_URL: ") || !strings.Contains(err.Error(), AllowPlaintext) || strings.Contains(err.Error(), u.Host)) {
			t.Errorf("%s: error %q: want one naming UPSTREAM_URL and %s, without the URL", tc.raw, err, AllowPlaintext)
		}
	}
}
