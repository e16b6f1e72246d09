// Package envconf reads configuration values from the environment for both
// binaries, with errors that name the variable and never echo its value
// (it may be a secret).
package envconf

import (
	"fmt"
	"net/netip"
	"net/url"
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

// AllowPlaintext is the variable that lets a secret or a device's data go
// in clear to another machine (ws://, http://): only for a network the
// operator trusts to encrypt it.
const AllowPlaintext = "ALLOW_PLAINTEXT"

// Plaintext returns an error naming name when u, with scheme plain (ws or
// http), would carry a token, key or live data in clear to another
// machine: its host is not loopback (localhost, 127.0.0.0/8, ::1), and
// allow (ALLOW_PLAINTEXT) is false. secure names the scheme to use. (A
// private network is not told apart by its names: Fly's *.internal is
// WireGuard, AWS's ec2.internal is not; the operator says so.)
func Plaintext(name string, u *url.URL, plain, secure string, allow bool) error {
	if allow || u.Scheme != plain || Local(u.Hostname()) {
		return nil
	}
	return fmt.Errorf("%s: %s:// to another machine sends its secrets in clear; use %s://, or set %s=true for a network that encrypts it", name, plain, secure, AllowPlaintext)
}

// Local reports whether host is this machine (localhost, a loopback
// address).
func Local(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
