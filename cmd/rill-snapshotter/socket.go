package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// listenUnix listens on the unix socket at path. Its directory is created 0700 when missing.
// A socket left by a crashed daemon (nobody answers on it) is replaced; a socket that answers
// belongs to a running process and is an error, as is any other kind of file at path.
func listenUnix(ctx context.Context, path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("address: create socket directory: %w", err)
		}
	}
	stale, err := checkSocket(ctx, path)
	if err != nil {
		return nil, err
	}
	if stale {
		logrus.WithField("address", path).Info("replacing stale socket left by a previous run")
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("address: remove stale socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("address: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("address: restrict socket permissions: %w", err)
	}
	return lis, nil
}

// checkSocket tells whether path can be listened on: nothing there, or a socket nobody answers
// on (stale: it must be removed first). A socket that answers, or another kind of file, is an
// error. It changes nothing, so the daemon calls it before it opens any state too.
func checkSocket(ctx context.Context, path string) (stale bool, _ error) {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("address: %w", err)
	case fi.Mode()&fs.ModeSocket == 0:
		return false, fmt.Errorf("address: %s exists and is not a socket; remove it or choose another address", path)
	case inUse(ctx, path):
		return false, fmt.Errorf("address: %s is in use by a running process (is another rill-snapshotter running? stop it or choose another address)", path)
	}
	return true, nil
}

// inUse reports whether a process accepts connections on the socket at path.
func inUse(ctx context.Context, path string) bool {
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(ctx, "unix", path)
	if err == nil {
		conn.Close()
		return true
	}
	// Refused (nobody listens) or the file is not a live socket: stale.
	return !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT)
}
