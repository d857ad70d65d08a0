package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// FakeSystemd stands in for systemd running rill-snapshotter as a unit of Type=notify with
// NotifyAccess=main, FileDescriptorStoreMax= and FileDescriptorStorePreserve=yes (as
// script/rill-snapshotter.service), on a machine whose PID 1 is no systemd. It is the test
// process's own code: no systemd runs.
//
// It listens on a unix datagram socket (NOTIFY_SOCKET, with SO_PASSCRED, so that it knows who
// sent each message) and reads sd_notify messages as systemd's service_notify_message does:
//
//   - messages from any process but the main one (the daemon it started last) are ignored and
//     their descriptors closed (NotifyAccess=main), as are datagrams that did not fit;
//   - READY=1 and STOPPING=1 are recorded (Notifications; a start waits for READY=1);
//   - FDSTOREREMOVE=1 with FDNAME=<name> closes and drops every descriptor kept under name; a
//     message with FDSTOREREMOVE=1 only removes, whatever else it says;
//   - FDSTORE=1 keeps the descriptors sent with it (SCM_RIGHTS) under FDNAME (names may repeat;
//     "stored" when FDNAME is missing or invalid), except one that is the very file already kept
//     (kcmp(2)) and those beyond the store's limit, which are closed;
//   - descriptors of any other message are closed.
//
// What it keeps is kept across stops, crashes and starts of the daemon
// (FileDescriptorStorePreserve=yes), until Close. When it starts the daemon (Snapshotter.Start
// once Env.StartFakeSystemd was called) it first reads every message already queued (systemd
// too handles notifications before the SIGCHLD of their sender), drops the kept descriptors
// that poll POLLHUP or POLLERR (systemd watches them and drops those; FDPOLL=0 opts out), and
// passes the others as descriptors 3, 4, ... with LISTEN_FDS=n, LISTEN_FDNAMES=name1:name2...
// and LISTEN_PID=<the daemon's pid>, besides NOTIFY_SOCKET. LISTEN_PID is set by a /bin/sh
// wrapper (`LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`): exec keeps the pid, which
// exists only after the fork, as systemd sets it in its forked child.
//
// One difference that no daemon can see: before passing a kept descriptor the fake clears its
// O_NONBLOCK (Go's exec.Cmd would otherwise register it with Go's poller, then make it blocking
// all the same). O_NONBLOCK belongs to the open file, shared with the daemon that kept it; that
// daemon has exited by then, and the next one sets what it needs.
type FakeSystemd struct {
	addr    string
	conn    *net.UnixConn
	maxFDs  int
	logPath string
	log     *os.File

	mu      sync.Mutex
	mainPID int
	store   []storedFD
	notes   []Notification
	starts  []ServiceStart
	dropped []string // names of kept descriptors dropped on POLLHUP/POLLERR
	synced  uint64   // the last sync marker read
	syncSeq uint64   // the last sync marker sent
	changed chan struct{}
	closed  bool
	done    chan struct{}
}

type storedFD struct {
	name string
	fd   int // close-on-exec, this process's own
	poll bool
}

// Notification is one datagram the fake systemd read from NOTIFY_SOCKET.
type Notification struct {
	At time.Time
	// PID is the sender's (SCM_CREDENTIALS).
	PID int
	// Fields are the message's KEY=VALUE lines.
	Fields map[string]string
	// FDs is how many descriptors came with it.
	FDs int
	// Accepted is false when the message was ignored: not from the main process, or too long.
	Accepted bool
}

// ServiceStart is one start of the daemon by the fake systemd.
type ServiceStart struct {
	PID int
	// Names are the LISTEN_FDNAMES passed, in the order of the descriptors (fd 3 on).
	Names []string
}

// DefaultFakeFDStoreMax is the fake's FileDescriptorStoreMax=, as in
// script/rill-snapshotter.service.
const DefaultFakeFDStoreMax = 4096

// notifyBufferMax is systemd's NOTIFY_BUFFER_MAX (PIPE_BUF): longer datagrams are ignored.
const notifyBufferMax = 4096

// fakeSyncKey marks the datagrams the fake sends itself to know it has read what was queued.
const fakeSyncKey = "X_RILL_TEST_FAKE_SYSTEMD_SYNC"

// StartFakeSystemd starts a fake systemd whose notify socket is in dir and which logs every
// message it reads to logPath; it keeps at most maxFDs descriptors (0: DefaultFakeFDStoreMax).
func StartFakeSystemd(dir, logPath string, maxFDs int) (*FakeSystemd, error) {
	if maxFDs <= 0 {
		maxFDs = DefaultFakeFDStoreMax
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the fake systemd's directory: %w", err)
	}
	addr := filepath.Join(dir, "notify")
	if len(addr) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("notify socket path %s is too long for a unix socket", addr)
	}
	_ = os.Remove(addr)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("fake systemd: listening on %s: %w", addr, err)
	}
	raw, err := conn.SyscallConn()
	if err == nil {
		var serr error
		err = raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
		err = errors.Join(err, serr)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("fake systemd: SO_PASSCRED on %s: %w", addr, err)
	}
	_ = conn.SetReadBuffer(8 << 20) // as systemd; the kernel caps it
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("fake systemd: opening its log: %w", err)
	}
	m := &FakeSystemd{addr: addr, conn: conn, maxFDs: maxFDs, logPath: logPath, log: logFile, changed: make(chan struct{}), done: make(chan struct{})}
	go m.serve()
	return m, nil
}

// NotifySocket is the fake's NOTIFY_SOCKET.
func (m *FakeSystemd) NotifySocket() string { return m.addr }

// LogPath is the fake's log: every message it read and every start.
func (m *FakeSystemd) LogPath() string { return m.logPath }

// Kept returns the names of the descriptors the fake keeps, in the order it would pass them.
func (m *FakeSystemd) Kept() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, len(m.store))
	for i, e := range m.store {
		names[i] = e.name
	}
	return names
}

// Notifications returns every message read so far.
func (m *FakeSystemd) Notifications() []Notification {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.notes)
}

// Starts returns every start of the daemon so far.
func (m *FakeSystemd) Starts() []ServiceStart {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.starts)
}

// DroppedOnHangup returns the names of kept descriptors the fake dropped because they polled
// POLLHUP or POLLERR.
func (m *FakeSystemd) DroppedOnHangup() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.dropped)
}

// Notified reports whether process pid sent a message with key=value that was accepted.
func (m *FakeSystemd) Notified(pid int, key, value string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.notifiedLocked(pid, key, value)
}

func (m *FakeSystemd) notifiedLocked(pid int, key, value string) bool {
	return slices.ContainsFunc(m.notes, func(n Notification) bool {
		return n.Accepted && n.PID == pid && n.Fields[key] == value
	})
}

// Close stops reading NOTIFY_SOCKET and closes every descriptor the fake keeps (as `systemctl
// clean --what=fdstore` would). The daemon should be stopped first.
func (m *FakeSystemd) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	err := m.conn.Close()
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.store {
		unix.Close(e.fd)
	}
	m.store = nil
	m.logf("closed: every kept descriptor closed")
	m.log.Close()
	_ = os.Remove(m.addr)
	return err
}

func (m *FakeSystemd) logf(format string, args ...any) {
	fmt.Fprintf(m.log, "%s "+format+"\n", append([]any{time.Now().UTC().Format(time.RFC3339Nano)}, args...)...)
}

// broadcastLocked wakes whoever waits for a change.
func (m *FakeSystemd) broadcastLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *FakeSystemd) serve() {
	defer close(m.done)
	buf := make([]byte, notifyBufferMax+1)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(253*4)) // SCM_MAX_FD
	for {
		// Go passes MSG_CMSG_CLOEXEC on Linux: what is received is never inherited by accident.
		n, oobn, flags, _, err := m.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.mu.Lock()
			m.logf("reading NOTIFY_SOCKET: %v", err)
			m.mu.Unlock()
			continue
		}
		pid, fds := parseNotifyControl(oob[:oobn])
		m.handle(buf[:n], flags, pid, fds)
	}
}

// parseNotifyControl returns the sender's pid and the descriptors of a message's control data.
func parseNotifyControl(oob []byte) (pid int, fds []int) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, nil
	}
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch msgs[i].Header.Type {
		case unix.SCM_CREDENTIALS:
			if cred, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
				pid = int(cred.Pid)
			}
		case unix.SCM_RIGHTS:
			if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	return pid, fds
}

func (m *FakeSystemd) handle(text []byte, flags, pid int, fds []int) {
	closeAll := func(fds []int) {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(text), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k != "" {
			fields[k] = v
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.broadcastLocked()
	if seq, ok := fields[fakeSyncKey]; ok && pid == os.Getpid() {
		m.synced, _ = strconv.ParseUint(seq, 10, 64)
		closeAll(fds)
		return
	}
	note := Notification{At: time.Now(), PID: pid, Fields: fields, FDs: len(fds)}
	switch {
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || len(text) > notifyBufferMax:
		m.logf("pid %d: datagram truncated (flags %#x), ignored", pid, flags)
	case m.mainPID == 0 || pid != m.mainPID:
		m.logf("pid %d: %q ignored: reception only permitted for the main pid %d (NotifyAccess=main)", pid, text, m.mainPID)
	default:
		note.Accepted = true
	}
	m.notes = append(m.notes, note)
	if !note.Accepted {
		closeAll(fds)
		return
	}
	m.logf("pid %d: %q with %d descriptors", pid, text, len(fds))
	name, named := fields["FDNAME"]
	validName := named && fdnameValid(name)
	switch {
	case fields["FDSTOREREMOVE"] == "1":
		if !validName {
			m.logf("FDSTOREREMOVE=1 requested, but no valid file descriptor name passed, ignoring")
			break
		}
		m.store = slices.DeleteFunc(m.store, func(e storedFD) bool {
			if e.name == name {
				unix.Close(e.fd)
				m.logf("removed descriptor %q", name)
				return true
			}
			return false
		})
	case fields["FDSTORE"] == "1":
		if !validName {
			if named {
				m.logf("FDNAME %q is invalid, using \"stored\"", name)
			}
			name = "stored"
		}
		for i, fd := range fds {
			if slices.ContainsFunc(m.store, func(e storedFD) bool { return sameFile(e.fd, fd) }) {
				m.logf("descriptor %q is a file already kept, ignored", name)
				unix.Close(fd)
				continue
			}
			if len(m.store) >= m.maxFDs {
				m.logf("hit the fd store limit (%d): %d descriptors closed", m.maxFDs, len(fds)-i)
				closeAll(fds[i:])
				break
			}
			m.store = append(m.store, storedFD{name: name, fd: fd, poll: fields["FDPOLL"] != "0"})
			m.logf("keeping descriptor %q (%d kept)", name, len(m.store))
		}
		fds = nil
	}
	closeAll(fds)
}

// fdnameValid is systemd's fdname_is_valid: printable ASCII without ':', at most 255 bytes.
func fdnameValid(name string) bool {
	if len(name) > 255 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e || c == ':' {
			return false
		}
	}
	return true
}

// sameFile reports whether a and b are the same open file (kcmp KCMP_FILE), as systemd's
// same_fd; where kcmp is unavailable, files are taken to differ.
func sameFile(a, b int) bool {
	const kcmpFile = 0
	pid := uintptr(os.Getpid())
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, pid, pid, kcmpFile, uintptr(a), uintptr(b), 0)
	return errno == 0 && r == 0
}

// sync waits until the fake has read every message queued on NOTIFY_SOCKET before the call:
// it sends itself a marker behind them (a unix datagram socket is read in order).
func (m *FakeSystemd) sync(ctx context.Context, timeout time.Duration) error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: m.addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("fake systemd: connecting to its own socket: %w", err)
	}
	defer c.Close()
	m.mu.Lock()
	m.syncSeq++
	seq := m.syncSeq
	m.mu.Unlock()
	if _, err := c.Write([]byte(fmt.Sprintf("%s=%d", fakeSyncKey, seq))); err != nil {
		return fmt.Errorf("fake systemd: sending itself a marker: %w", err)
	}
	return m.waitFor(ctx, timeout, "its own marker", func() bool { return m.synced >= seq })
}

// waitFor waits up to timeout until cond (called with m.mu held) is true.
func (m *FakeSystemd) waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		m.mu.Lock()
		ok, changed := cond(), m.changed
		m.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-timer.C:
			return fmt.Errorf("fake systemd: no %s within %s", what, timeout)
		case <-ctx.Done():
			return fmt.Errorf("fake systemd: waiting for %s: %w", what, ctx.Err())
		}
	}
}

// readyErr is nil once process pid sent READY=1.
func (m *FakeSystemd) readyErr(pid int) error {
	if m.Notified(pid, "READY", "1") {
		return nil
	}
	return fmt.Errorf("no READY=1 from pid %d on NOTIFY_SOCKET yet", pid)
}

// start starts bin with args as the service's main process, with NOTIFY_SOCKET and the kept
// descriptors (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), its output appended to logPath.
func (m *FakeSystemd) start(ctx context.Context, name, logPath, bin string, args ...string) (*Process, error) {
	// What the previous main process sent before it exited is handled as its own.
	if err := m.sync(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock() // until the main pid is known: its first messages wait for it
	if m.closed {
		return nil, errors.New("fake systemd is closed")
	}
	m.store = slices.DeleteFunc(m.store, func(e storedFD) bool {
		if !e.poll {
			return false
		}
		pfd := []unix.PollFd{{Fd: int32(e.fd), Events: 0}}
		if n, err := unix.Poll(pfd, 0); err != nil || n == 0 || pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) == 0 {
			return false
		}
		m.logf("dropping descriptor %q: it polls %#x (hung up)", e.name, pfd[0].Revents)
		m.dropped = append(m.dropped, e.name)
		unix.Close(e.fd)
		return true
	})
	var (
		files []*os.File
		names []string
	)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, e := range m.store {
		dup, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("fake systemd: duplicating kept descriptor %q: %w", e.name, err)
		}
		if err := unix.SetNonblock(dup, false); err != nil { // see FakeSystemd
			unix.Close(dup)
			return nil, fmt.Errorf("fake systemd: kept descriptor %q: %w", e.name, err)
		}
		files = append(files, os.NewFile(uintptr(dup), e.name))
		names = append(names, e.name)
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == "NOTIFY_SOCKET" || strings.HasPrefix(k, "LISTEN_")
	})
	env = append(env, "NOTIFY_SOCKET="+m.addr)
	cmd, cmdArgs := bin, args
	if len(files) > 0 {
		env = append(env, fmt.Sprintf("LISTEN_FDS=%d", len(files)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
		cmd, cmdArgs = "/bin/sh", append([]string{"-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, bin}, args...)
	}
	proc, err := startProcessFiles(name, logPath, env, files, cmd, cmdArgs...)
	if err != nil {
		return nil, err
	}
	m.mainPID = proc.PID()
	m.starts = append(m.starts, ServiceStart{PID: proc.PID(), Names: names})
	m.logf("started %s (pid %d) with %d descriptors: %s", bin, proc.PID(), len(names), strings.Join(names, ":"))
	return proc, nil
}
