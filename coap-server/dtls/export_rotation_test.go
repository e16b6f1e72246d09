package dtls

// BeforeRegistration makes every handshake of s run fn just before its
// session is registered (after the isKnown check), where a key change
// finds no session to close.
func BeforeRegistration(s *Server, fn func()) { s.ln.registering.Store(&fn) }
