package ingest

import (
	"net"
	"syscall"
)

// receiveBuffer is the socket's effective SO_RCVBUF in bytes (Linux
// reports twice what was set, the doubling being its bookkeeping).
func receiveBuffer(conn *net.UDPConn) (int, bool) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, false
	}
	var size int
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		size, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	}); err != nil || gerr != nil {
		return 0, false
	}
	return size / 2, true
}
