//go:build !linux

package ingest

import "net"

// receiveBuffer is not read outside Linux.
func receiveBuffer(*net.UDPConn) (int, bool) { return 0, false }
