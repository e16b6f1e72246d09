package browser

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

// refKey is the per-IP key of a, worked out without ipKey: an IPv4
// address (or an IPv4-mapped IPv6 one) by itself, any other IPv6 address
// by its /64, written as a prefix; the zone never counts.
func refKey(a netip.Addr) string {
	a = a.WithZone("")
	if a.Is4() || a.Is4In6() {
		return netip.AddrFrom4(a.As4()).String()
	}
	b := a.As16()
	for i := 8; i < 16; i++ {
		b[i] = 0
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), 64).String()
}

// validKey reports whether k is a key ipKey can give: a canonical IPv4
// address, or a canonical, masked IPv6 /64.
func validKey(k string) bool {
	if a, err := netip.ParseAddr(k); err == nil {
		return a.Is4() && a.String() == k
	}
	p, err := netip.ParsePrefix(k)
	return err == nil && p.Addr().Is6() && !p.Addr().Is4In6() && p.Bits() == 64 &&
		p == p.Masked() && p.String() == k
}

// FuzzClientIP feeds ClientIP arbitrary peer addresses and proxy header
// values: it must never panic; with no header (or a header whose value,
// trimmed, is not an address) the key is the peer's: refKey of its address,
// or the peer string itself when it is no address; with an address in the
// header, the key is that address's (a valid key); every IPv6 address of one
// /64 gives the same key and one outside it another.
func FuzzClientIP(f *testing.F) {
	f.Add("203.0.113.7:51234", "", true, uint64(0), uint8(0))
	f.Add("203.0.113.7:51234", "198.51.100.9", true, uint64(0), uint8(0))
	f.Add("[2001:db8:1:2::10]:443", "", false, uint64(1), uint8(3))
	f.Add("10.0.0.1:1", " 2001:db8:abcd:12:34:56:78:9a\t", true, uint64(0xffff_ffff_ffff_ffff), uint8(63))
	f.Add("10.0.0.1:1", "::ffff:192.0.2.1", true, uint64(0), uint8(0))
	f.Add("[::ffff:192.0.2.1]:80", "", true, uint64(0), uint8(0))
	f.Add("10.0.0.1:1", "fe80::1%eth0", true, uint64(7), uint8(10))
	f.Add("10.0.0.1:1", "::1", true, uint64(0xffff_0102_0304), uint8(0))
	f.Add("10.0.0.1:1", "198.51.100.9:4711", true, uint64(0), uint8(0))
	f.Add("10.0.0.1:1", "198.51.100.9, 10.0.0.2", true, uint64(0), uint8(0))
	f.Add("10.0.0.1:1", "[2001:db8::1]", true, uint64(0), uint8(0))
	f.Add("192.0.2.1", "garbage", true, uint64(0), uint8(0))
	f.Add("@pipe", "", true, uint64(0), uint8(0))
	f.Add("", "", false, uint64(0), uint8(0))
	f.Add("[fe80::1%25en0]:8080", "", false, uint64(0), uint8(0))
	const header = "Fly-Client-IP"
	f.Fuzz(func(t *testing.T, remote, value string, useHeader bool, low uint64, bit uint8) {
		req := func(v string) *http.Request {
			r := &http.Request{Header: http.Header{}, RemoteAddr: remote}
			r.Header.Set(header, v)
			return r
		}
		// The peer's key.
		host, _, err := net.SplitHostPort(remote)
		if err != nil {
			host = remote
		}
		peer := host
		if a, err := netip.ParseAddr(host); err == nil {
			peer = refKey(a)
			if !validKey(peer) {
				t.Fatalf("refKey(%v) = %q", a, peer)
			}
		}
		name := ""
		if useHeader {
			name = header
		}
		got := ClientIP(req(value), name)
		a, err := netip.ParseAddr(strings.TrimSpace(value))
		if !useHeader || err != nil {
			if got != peer {
				t.Fatalf("ClientIP(peer %q, %s %q, trusted %v) = %q, want the peer's %q", remote, header, value, useHeader, got, peer)
			}
			return
		}
		want := refKey(a)
		if got != want || !validKey(got) {
			t.Fatalf("ClientIP(peer %q, %s %q) = %q, want %q", remote, header, value, got, want)
		}
		if a.Is4() || a.Is4In6() {
			return
		}
		// Same /64, other interface identifier: same key. An IPv4-mapped
		// address lies in ::/64 but is IPv4, keyed by itself.
		b16 := a.As16()
		for i := 0; i < 8; i++ {
			b16[8+i] ^= byte(low >> (56 - 8*i))
		}
		if b := netip.AddrFrom16(b16); !b.Is4In6() {
			if k := ClientIP(req(b.String()), header); k != got {
				t.Fatalf("%v and %v, one /64, keyed %q and %q", a, b, got, k)
			}
		}
		// Another /64: another key.
		c16 := a.As16()
		c16[(bit%64)/8] ^= 0x80 >> (bit % 8)
		if c := netip.AddrFrom16(c16); !c.Is4In6() {
			if k := ClientIP(req(c.String()), header); k == got {
				t.Fatalf("%v and %v, two /64s, both keyed %q", a, c, got)
			}
		}
	})
}
