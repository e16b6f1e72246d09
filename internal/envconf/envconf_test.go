package envconf

import (
	"strings"
	"testing"
)

func TestInt(t *testing.T) {
	env := map[string]string{"GOOD": "42", "LOW": "-5", "JUNK": "4x2", "SECRETISH": "hunter2"}
	get := func(k string) string { return env[k] }
	tests := []struct {
		name    string
		want    int
		wantErr bool
	}{
		{"UNSET", 7, false},
		{"GOOD", 42, false},
		{"LOW", 0, true},
		{"JUNK", 0, true},
		{"SECRETISH", 0, true},
	}
	for _, tc := range tests {
		got, err := Int(get, tc.name, 7, 1, 100)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("Int(%s) = %d, %v", tc.name, got, err)
		}
		if err != nil && (!strings.HasPrefix(err.Error(), tc.name+":") || strings.Contains(err.Error(), env[tc.name])) {
			t.Errorf("error %q must name %s and not echo its value", err, tc.name)
		}
	}
	if Or("", "d") != "d" || Or("v", "d") != "v" {
		t.Error("Or")
	}
}
