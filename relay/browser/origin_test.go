package browser

import (
	"net/http/httptest"
	"testing"
)

func TestOrigins(t *testing.T) {
	listed, err := ParseOrigins(" https://app.example.com , http://localhost:3000")
	if err != nil {
		t.Fatal(err)
	}
	star, _ := ParseOrigins("*")
	none, _ := ParseOrigins("")
	cases := []struct {
		name   string
		policy Origins
		origin string
		want   bool
	}{
		{"no origin (not a browser)", none, "", true},
		{"same origin as the relay", none, "http://relay.example.com:8090", true},
		{"foreign origin, empty list", none, "https://evil.example.com", false},
		{"listed", listed, "https://app.example.com", true},
		{"listed, other case", listed, "HTTPS://APP.example.com", true},
		{"listed with port", listed, "http://localhost:3000", true},
		{"scheme differs", listed, "http://app.example.com", false},
		{"port differs", listed, "http://localhost:3001", false},
		{"suffix trick", listed, "https://app.example.com.evil.com", false},
		{"null origin", listed, "null", false},
		{"star", star, "https://anything.example", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "http://relay.example.com:8090/device-logs", nil)
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			if got := tc.policy.Allowed(r); got != tc.want {
				t.Errorf("Allowed = %v, want %v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"example.com", "https://a.com/path", "ftp://a.com", "https://a.com?x=1", "https://user@a.com"} {
		if _, err := ParseOrigins(bad); err == nil {
			t.Errorf("ParseOrigins(%q) accepted", bad)
		}
	}
}
