package dtls

// RotateCookieSecret rotates s's cookie secret as cookieRotation does: a
// cookie handed out before two rotations no longer verifies.
func RotateCookieSecret(s *Server) { s.ln.demux.cookies.rotate() }

// HoldSessionClose makes every session's Close run hold first.
func HoldSessionClose(s *Server, hold func()) { s.ln.holdClose.Store(&hold) }
