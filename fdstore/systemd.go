package fdstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// systemdStore sends descriptors to systemd's file-descriptor store over NOTIFY_SOCKET
// (sd_pid_notify_with_fds). systemd does not answer: what it keeps is seen only at the next start.
type systemdStore struct {
	addr string // NOTIFY_SOCKET, '@' for the abstract namespace
	log  *logrus.Entry

	mu     sync.Mutex // one Put or Remove at a time: Put is two datagrams
	sock   int        // unbound SOCK_DGRAM, -1 once closed
	closed bool
}

func openSystemd(opts Options) (Store, map[string]*os.File, error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil, nil, errors.New("fdstore mode systemd: NOTIFY_SOCKET is not set (run as a Type=notify unit, or use mode holder)")
	}
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return nil, nil, fmt.Errorf("NOTIFY_SOCKET=%q is neither a path nor an abstract socket (vsock is not supported): use fdstore mode holder", addr)
	}
	if len(addr) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, nil, fmt.Errorf("NOTIFY_SOCKET=%q is longer than a unix socket address", addr)
	}
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socket for NOTIFY_SOCKET: %w", err)
	}
	// systemd reads its notify socket at once; never wait long on a full queue.
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(sock)
		return nil, nil, fmt.Errorf("socket for NOTIFY_SOCKET: %w", err)
	}
	s := &systemdStore{addr: addr, sock: sock, log: opts.Log.WithFields(logrus.Fields{"fdstore": "systemd", "notify_socket": addr})}
	files := listenFiles(s.log)
	s.log.WithField("descriptors", len(files)).Info("keeping descriptors in systemd's file-descriptor store (the unit must set FileDescriptorStoreMax=)")
	return s, files, nil
}

// listenFiles takes the descriptors systemd passed (LISTEN_FDS from fd 3, named by
// LISTEN_FDNAMES, for this process only: LISTEN_PID must be ours, as sd_listen_fds requires),
// marks them close-on-exec and unsets the three variables so children do not inherit them.
func listenFiles(log *logrus.Entry) map[string]*os.File {
	if pid := os.Getenv("LISTEN_PID"); pid != "" && pid != fmt.Sprint(os.Getpid()) {
		log.WithField("listen_pid", pid).Warn("LISTEN_FDS are for another process: ignoring them")
	}
	files := map[string]*os.File{}
	for _, f := range activation.Files(true) { // true: unsets LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES
		if old, ok := files[f.Name()]; ok {
			log.WithField("name", f.Name()).Warn("systemd passed two descriptors under one name: keeping the later one")
			old.Close()
		}
		files[f.Name()] = f
	}
	return files
}

func (s *systemdStore) Kind() string { return "systemd" }

// Put removes what systemd keeps under name, then stores f. These are two messages because
// systemd reads FDSTOREREMOVE=1 and FDSTORE=1 in one message as a removal only.
func (s *systemdStore) Put(_ context.Context, name string, f *os.File) error {
	if err := ValidName(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.send(removeRequest(name), nil); err != nil {
		return fmt.Errorf("replace descriptor %q in systemd's store: %w", name, err)
	}
	if err := s.send(storeRequest(name), f); err != nil {
		return fmt.Errorf("store descriptor %q in systemd's store: %w", name, err)
	}
	return nil
}

func (s *systemdStore) Remove(_ context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.send(removeRequest(name), nil); err != nil {
		return fmt.Errorf("remove descriptor %q from systemd's store: %w", name, err)
	}
	return nil
}

func (s *systemdStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return unix.Close(s.sock)
}

// send sends one datagram to NOTIFY_SOCKET, with f's descriptor when f is not nil. Go's
// SockaddrUnix turns a leading '@' into the abstract namespace's NUL byte.
func (s *systemdStore) send(text string, f *os.File) error {
	if s.closed {
		return errors.New("store closed")
	}
	to := &unix.SockaddrUnix{Name: s.addr}
	if f == nil {
		return sendmsgRetry(s.sock, []byte(text), nil, to)
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var sendErr error
	if err := raw.Control(func(fd uintptr) {
		sendErr = sendmsgRetry(s.sock, []byte(text), unix.UnixRights(int(fd)), to)
	}); err != nil {
		return err
	}
	if sendErr != nil {
		return fmt.Errorf("send to NOTIFY_SOCKET %s: %w", s.addr, sendErr)
	}
	return nil
}

func sendmsgRetry(sock int, p, oob []byte, to unix.Sockaddr) error {
	for {
		err := unix.Sendmsg(sock, p, oob, to, unix.MSG_NOSIGNAL)
		if err != unix.EINTR {
			return err
		}
	}
}
