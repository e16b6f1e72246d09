// Package envconf reads configuration values from the environment for both
// binaries, with errors that name the variable and never echo its value
// (it may be a secret).
package envconf

import (
	"fmt"
	"strconv"
	"strings"
)

// Or returns v, or def when v is empty.
func Or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Int reads the integer variable name through getenv: def when unset, an
// error naming the variable when it is not an integer in [lo, hi].
func Int(getenv func(string) string, name string, def, lo, hi int) (int, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s: want an integer from %d to %d", name, lo, hi)
	}
	return n, nil
}

// Bool reads the boolean variable name through getenv: def when unset,
// true for "true" or "1" and false for "false" or "0" in any case, else an
// error naming the variable. Both binaries read every switch this way.
func Bool(getenv func(string) string, name string, def bool) (bool, error) {
	switch strings.ToLower(getenv(name)) {
	case "":
		return def, nil
	case "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("%s: want true or false", name)
}
