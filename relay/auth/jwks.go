package auth

import (
	"fmt"
	"io"
	"net/http"
)

// MaxJWKSBytes bounds a JWKS response. A Supabase key set is a few KiB (a
// handful of EC/RSA public keys); the bound keeps whoever answers the JWKS
// URL (a compromised proxy, a plaintext hop) from making the relay buffer
// an arbitrarily large body, while leaving room for many rotated keys.
const MaxJWKSBytes = 256 << 10

// ErrJWKSTooLarge: the JWKS response exceeded MaxJWKSBytes. The fetch
// fails (the keys already held are kept) rather than parsing a cut body.
var ErrJWKSTooLarge = fmt.Errorf("auth: JWKS response larger than %d KiB", MaxJWKSBytes>>10)

// limitClient returns a copy of c (never c itself: the caller may share it)
// whose response bodies fail with ErrJWKSTooLarge past max bytes.
func limitClient(c *http.Client, max int64) *http.Client {
	l := *c
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	l.Transport = limitTransport{base: base, max: max}
	return &l
}

// limitTransport caps the body of every response of base. The JWKS
// library decodes the body with no limit, so the cap must sit below it.
type limitTransport struct {
	base http.RoundTripper
	max  int64
}

func (t limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitBody{ReadCloser: resp.Body, left: t.max}
	return resp, nil
}

// limitBody passes on at most left bytes of the body. It asks for one
// byte more, so that a body of exactly the limit is fine and a longer one
// fails (and keeps failing) with ErrJWKSTooLarge.
type limitBody struct {
	io.ReadCloser
	left int64 // -1 once the limit was passed
}

func (b *limitBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, ErrJWKSTooLarge
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.ReadCloser.Read(p)
	if int64(n) > b.left {
		n, b.left = int(b.left), -1
		return n, ErrJWKSTooLarge
	}
	b.left -= int64(n)
	return n, err
}
