package dtls

// RotateCookieSecret rotates s's cookie secret as cookieRotation does: a
// cookie handed out before two rotations no longer verifies.
func RotateCookieSecret(s *Server) { s.ln.demux.cookies.rotate() }
