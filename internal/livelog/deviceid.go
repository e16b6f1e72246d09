package livelog

// ValidDeviceID reports whether id matches ^[A-Za-z0-9_-]{1,64}$, the device
// ID format of the contract. It is checked by hand rather than with regexp
// because it runs on every datagram and every WebSocket request.
func ValidDeviceID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
