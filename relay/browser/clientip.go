package browser

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ClientIP is the key of a request's per-IP limits: the connection's peer
// address (RemoteAddr), or, when header is set (TRUSTED_PROXY_HEADER, e.g.
// Fly-Client-IP behind Fly's proxy), that header's address. Only set a
// header that the proxy in front of the relay always overwrites: a client
// can send any header, so X-Forwarded-For, which proxies append to, is
// never trusted by default. An IPv6 address is keyed by its /64, the
// block one subscriber usually holds; an IPv4 address by itself.
func ClientIP(r *http.Request, header string) string {
	if header != "" {
		if v := strings.TrimSpace(r.Header.Get(header)); v != "" {
			if a, err := netip.ParseAddr(v); err == nil {
				return ipKey(a)
			}
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return ipKey(a)
	}
	return host
}

func ipKey(a netip.Addr) string {
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(64)
	return p.String()
}
