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

func TestBool(t *testing.T) {
	env := map[string]string{"T": "true", "UPPER": "TRUE", "ONE": "1", "F": "False", "ZERO": "0", "YES": "yes", "SECRETISH": "hunter2"}
	get := func(k string) string { return env[k] }
	for _, tc := range []struct {
		name    string
		def     bool
		want    bool
		wantErr bool
	}{
		{"UNSET", true, true, false},
		{"UNSET", false, false, false},
		{"T", false, true, false},
		{"UPPER", false, true, false},
		{"ONE", false, true, false},
		{"F", true, false, false},
		{"ZERO", true, false, false},
		{"YES", false, false, true},
		{"SECRETISH", false, false, true},
	} {
		got, err := Bool(get, tc.name, tc.def)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("Bool(%s, %v) = %v, %v", tc.name, tc.def, got, err)
		}
		if err != nil && (!strings.HasPrefix(err.Error(), tc.name+":") || strings.Contains(err.Error(), env[tc.name])) {
			t.Errorf("error %q must name %s and not echo its value", err, tc.name)
		}
	}
}
