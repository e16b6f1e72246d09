//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package stream

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDir takes DATA_DIR's lock (lock.go) and returns what releases it.
func lockDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("DATA_DIR: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		var pid [16]byte
		n, _ := f.ReadAt(pid[:], 0)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errInUse(dir, strings.TrimSpace(string(pid[:n])))
		}
		return nil, fmt.Errorf("DATA_DIR: lock %s: %w", path, err)
	}
	// The holder's pid, for the line a second process prints. Only a
	// hint: the lock is the flock, not the file's content.
	if f.Truncate(0) == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
