package fdstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// ErrHolderRunning is returned by RunHolder when another holder already serves the socket.
var ErrHolderRunning = errors.New("another fd-holder serves this socket")

// HolderOption changes a holder's defaults.
type HolderOption func(*holderConfig)

type holderConfig struct {
	maxFDs   int
	idle     time.Duration // a client's time to send its next request, or to take a reply
	maxConns int           // clients served at once; more wait in the listen backlog
}

// WithMaxFDs caps the descriptors the holder keeps (default DefaultMaxFDs).
func WithMaxFDs(n int) HolderOption { return func(c *holderConfig) { c.maxFDs = n } }

// holder keeps descriptors by name for its clients.
type holder struct {
	cfg holderConfig
	log *logrus.Entry

	mu   sync.Mutex
	kept map[string]keptFile
}

// keptFile is a kept descriptor. fd is f's number, read once: os.File.Fd may change the
// descriptor's blocking mode, which is shared with every process holding it.
type keptFile struct {
	f  *os.File
	fd int
}

// RunHolder is the fd-holder: it serves socket (SOCK_SEQPACKET, mode 0600, clients running as
// root or as its own user) until ctx ends, keeping the descriptors it is given by name. It refuses to start,
// with ErrHolderRunning, when another holder serves socket (it holds a lock on socket+".pid",
// which names its pid). When ctx ends it removes the socket and the pidfile and closes
// every kept descriptor. The protocol is in the package documentation.
func RunHolder(ctx context.Context, socket string, log *logrus.Entry, opts ...HolderOption) error {
	cfg := holderConfig{maxFDs: DefaultMaxFDs, idle: defaultTimeout, maxConns: 32}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.maxFDs < 1 {
		return fmt.Errorf("fd-holder: max descriptors %d: want at least 1", cfg.maxFDs)
	}
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	log = log.WithField("socket", socket)
	if err := checkSocketPath(socket); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return fmt.Errorf("fd-holder: directory of the socket: %w", err)
	}
	pidfile, err := lockPidfile(socket + ".pid")
	if err != nil {
		return err
	}
	defer func() {
		os.Remove(pidfile.Name())
		pidfile.Close() // releases the lock
	}()
	l, err := listenHolder(socket)
	if err != nil {
		return err
	}
	defer os.Remove(socket)

	h := &holder{cfg: cfg, log: log, kept: map[string]keptFile{}}
	log.WithFields(logrus.Fields{"pid": os.Getpid(), "max_fds": cfg.maxFDs}).Info("fd-holder started")
	err = h.serve(ctx, l)
	h.mu.Lock()
	n := len(h.kept)
	for name, k := range h.kept {
		k.f.Close()
		delete(h.kept, name)
	}
	h.mu.Unlock()
	log.WithField("dropped", n).Info("fd-holder stopped")
	return err
}

func checkSocketPath(socket string) error {
	if !filepath.IsAbs(socket) {
		return fmt.Errorf("fd-holder socket %q: want an absolute path", socket)
	}
	if len(socket)+len(".new") >= len(unix.RawSockaddrUnix{}.Path) {
		return fmt.Errorf("fd-holder socket %q: longer than a unix socket address allows (%d bytes): choose a shorter path", socket, len(unix.RawSockaddrUnix{}.Path)-len(".new")-1)
	}
	return nil
}

// lockPidfile takes an exclusive lock on path, which lives as long as this process, and
// writes our pid in it. The lock, not the socket file, says whether a holder runs: a holder
// killed by SIGKILL leaves its socket behind, but not its lock.
func lockPidfile(path string) (*os.File, error) {
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("fd-holder pidfile: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			pid, _ := os.ReadFile(path)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w: pid %s holds %s; it keeps descriptors of running containers, stop it only when none runs: %w",
					ErrHolderRunning, strings.TrimSpace(string(pid)), path, err)
			}
			return nil, fmt.Errorf("fd-holder pidfile %s: lock: %w", path, err)
		}
		// A holder that was stopping may have removed the file we locked: lock the one at path.
		var locked, now unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &locked); err == nil && unix.Stat(path, &now) == nil &&
			locked.Dev == now.Dev && locked.Ino == now.Ino {
			if err := f.Truncate(0); err != nil {
				f.Close()
				return nil, fmt.Errorf("fd-holder pidfile %s: %w", path, err)
			}
			if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
				f.Close()
				return nil, fmt.Errorf("fd-holder pidfile %s: %w", path, err)
			}
			return f, nil
		}
		f.Close()
		if attempt == 10 {
			return nil, fmt.Errorf("fd-holder pidfile %s keeps being replaced: is another holder starting and stopping in a loop?", path)
		}
	}
}

// listenHolder binds socket with mode 0600 from the start: it binds a temporary name, sets the
// mode, then renames it over socket (replacing a dead holder's socket; we hold the lock).
func listenHolder(socket string) (*net.UnixListener, error) {
	if c, err := net.DialTimeout("unixpacket", socket, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%w: something listens on %s without holding %s.pid: find it with `ss -xlp`", ErrHolderRunning, socket, socket)
	}
	tmp := socket + ".new"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("fd-holder: remove stale %s: %w", tmp, err)
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("fd-holder: listen on %s: %w", tmp, err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("fd-holder: socket mode: %w", err)
	}
	if err := os.Rename(tmp, socket); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("fd-holder: put the socket in place: %w", err)
	}
	return l, nil
}

func (h *holder) serve(ctx context.Context, l *net.UnixListener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, h.cfg.maxConns)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			l.Close()
			return nil
		}
		c, err := l.AcceptUnix()
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				return nil
			}
			h.log.WithError(err).Warn("fd-holder: accept failed, retrying")
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			stopConn := context.AfterFunc(ctx, func() { c.Close() })
			defer stopConn()
			h.serveConn(c)
		}()
	}
}

// serveConn answers one client's requests until it hangs up, stays idle past the idle time,
// or does not take a reply in time: no client holds the holder.
func (h *holder) serveConn(c *net.UnixConn) {
	defer c.Close()
	if err := checkPeer(c); err != nil {
		h.log.WithError(err).Warn("fd-holder: client refused")
		return
	}
	for {
		c.SetDeadline(time.Now().Add(h.cfg.idle))
		r, err := receive(c)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				h.log.Debug("fd-holder: client idle too long, hung up")
			}
			return
		}
		if err := h.handle(c, r); err != nil {
			h.log.WithError(err).Debug("fd-holder: reply failed, hung up")
			return
		}
	}
}

// checkPeer admits clients running as root or as the holder's own user.
func checkPeer(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("peer credentials: %w", credErr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("client pid %d runs as uid %d: only root and uid %d may use the holder", cred.Pid, cred.Uid, os.Geteuid())
	}
	return nil
}

// handle answers one request. It owns r's descriptors: it keeps or closes them.
func (h *holder) handle(c *net.UnixConn, r received) error {
	defer r.closeFDs()
	if err := r.check(); err != nil {
		h.log.WithError(err).Warn("fd-holder: request refused")
		return h.reply(c, err)
	}
	m, err := parseMessage(r.text)
	if err != nil {
		return h.reply(c, fmt.Errorf("request: %w", err))
	}
	switch {
	case m.is(keyStore):
		name := m[keyName]
		if err := ValidName(name); err != nil {
			return h.reply(c, fmt.Errorf("FDSTORE: %w", err))
		}
		if len(r.fds) != 1 {
			return h.reply(c, fmt.Errorf("FDSTORE of %q carries %d descriptors: send exactly one", name, len(r.fds)))
		}
		if err := h.keep(name, r.fds[0]); err != nil {
			return h.reply(c, err)
		}
		r.fds = nil // kept
		return h.reply(c, nil)
	case m.is(keyRemove):
		name := m[keyName]
		if err := ValidName(name); err != nil {
			return h.reply(c, fmt.Errorf("FDSTOREREMOVE: %w", err))
		}
		if len(r.fds) != 0 {
			return h.reply(c, errors.New("FDSTOREREMOVE carries descriptors: send none"))
		}
		h.drop(name)
		return h.reply(c, nil)
	case m.is(keyList):
		if len(r.fds) != 0 {
			return h.reply(c, errors.New("LIST carries descriptors: send none"))
		}
		return h.list(c)
	default:
		return h.reply(c, fmt.Errorf("unknown request %q: this holder answers FDSTORE=1, FDSTOREREMOVE=1 and LIST=1", firstLine(r.text)))
	}
}

func firstLine(text []byte) string {
	s, _, _ := strings.Cut(string(text), "\n")
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return s
}

func (h *holder) reply(c *net.UnixConn, err error) error {
	if err != nil {
		return sendFile(c, errorReply(err), nil)
	}
	return sendFile(c, okReply(), nil)
}

// keep keeps fd under name. On error fd stays the caller's, to close.
func (h *holder) keep(name string, fd int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	old, replace := h.kept[name]
	if !replace && len(h.kept) >= h.cfg.maxFDs {
		h.sweepLocked()
		if len(h.kept) >= h.cfg.maxFDs {
			return fmt.Errorf("FDSTORE of %q: the holder keeps its maximum of %d descriptors: remove unused ones (FDSTOREREMOVE) or restart the holder with a larger --max-fds", name, h.cfg.maxFDs)
		}
	}
	h.kept[name] = keptFile{f: os.NewFile(uintptr(fd), name), fd: fd}
	if replace {
		old.f.Close()
	}
	return nil
}

func (h *holder) drop(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if k, ok := h.kept[name]; ok {
		delete(h.kept, name)
		k.f.Close()
	}
}

// list sends every kept descriptor, one message each, then END=1. It first drops the
// descriptors whose other end is gone.
func (h *holder) list(c *net.UnixConn) error {
	h.mu.Lock()
	h.sweepLocked()
	names := make([]string, 0, len(h.kept))
	files := make([]*os.File, 0, len(h.kept))
	for name := range h.kept {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		files = append(files, h.kept[name].f)
	}
	h.mu.Unlock()
	for i, f := range files {
		c.SetWriteDeadline(time.Now().Add(h.cfg.idle))
		// A concurrent Remove may have closed f: sendFile then fails on f, not on c; skip it.
		if err := sendFile(c, listEntry(names[i]), f); err != nil {
			if errors.Is(err, errFileClosed) {
				continue
			}
			return err
		}
	}
	return sendFile(c, endReply(), nil)
}

// sweepLocked drops the kept descriptors that poll POLLERR or POLLHUP: a pipe or socket whose
// peer is gone, a /dev/fuse connection that was aborted or unmounted. systemd's store does
// the same (FDPOLL).
func (h *holder) sweepLocked() {
	const batch = 1024
	names := make([]string, 0, len(h.kept))
	for name := range h.kept {
		names = append(names, name)
	}
	for start := 0; start < len(names); start += batch {
		part := names[start:min(start+batch, len(names))]
		pfds := make([]unix.PollFd, len(part))
		for i, name := range part {
			pfds[i] = unix.PollFd{Fd: int32(h.kept[name].fd)}
		}
		for {
			_, err := unix.Poll(pfds, 0)
			if err != syscall.EINTR {
				if err != nil {
					h.log.WithError(err).Warn("fd-holder: poll of kept descriptors failed")
				}
				break
			}
		}
		for i, name := range part {
			if pfds[i].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
				h.log.WithFields(logrus.Fields{"name": name, "revents": fmt.Sprintf("%#x", pfds[i].Revents)}).Info("fd-holder: dropped a descriptor whose other end is gone")
				h.kept[name].f.Close()
				delete(h.kept, name)
			}
		}
	}
}
