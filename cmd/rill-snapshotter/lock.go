package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFile is the file under root whose exclusive lock says which daemon owns root; it holds
// that daemon's pid.
const lockFile = "lock"

// lockRoot takes the exclusive lock of root, without waiting: two daemons on one root would
// share a metadata store, a cache and mounts. The lock is the kernel's (flock), so a daemon that
// crashed leaves nothing to clean up. release drops it; the file stays.
func lockRoot(root string) (release func(), _ error) {
	path := filepath.Join(root, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("root: open lock file %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		owner := lockOwner(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("root %s is in use by another rill-snapshotter (%s, holding %s): stop it, or give this one another root (--root or root in the config)", root, owner, path)
		}
		return nil, fmt.Errorf("root: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("root: write pid to lock file %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// lockOwner names the process that holds the lock, from the pid it wrote.
func lockOwner(f *os.File) string {
	b, err := io.ReadAll(io.LimitReader(f, 32))
	pid, convErr := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || convErr != nil || pid <= 0 {
		return "pid unknown"
	}
	return "pid " + strconv.Itoa(pid)
}
