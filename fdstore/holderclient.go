package fdstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// holderStore is the client of a holder. Each call is one short connection, so the client
// keeps no state that a holder's restart or a client's crash could leave half-done.
type holderStore struct {
	socket string
	log    *logrus.Entry

	mu     sync.Mutex
	closed bool
}

func openHolder(ctx context.Context, opts Options) (Store, map[string]*os.File, error) {
	if err := checkSocketPath(opts.HolderSocket); err != nil {
		return nil, nil, err
	}
	s := &holderStore{socket: opts.HolderSocket, log: opts.Log.WithFields(logrus.Fields{"fdstore": "holder", "socket": opts.HolderSocket})}
	files, err := s.list(ctx)
	if isNoListener(err) {
		if err = startHolder(ctx, opts, s.log); err == nil {
			files, err = s.list(ctx)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	s.log.WithField("descriptors", len(files)).Info("keeping descriptors in the fd-holder")
	return s, files, nil
}

// isNoListener tells a missing or dead holder (no socket file, or nobody accepting on it).
func isNoListener(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// startHolder runs opts.HolderCommand in its own session (so that signals to the daemon's
// process group never reach it) with stdin and stdout on /dev/null and stderr appended to
// socket+".log", and waits until its socket accepts.
func startHolder(ctx context.Context, opts Options, log *logrus.Entry) error {
	socket := opts.HolderSocket
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return fmt.Errorf("start fd-holder: directory of %s: %w", socket, err)
	}
	logPath := socket + ".log"
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start fd-holder: its log: %w", err)
	}
	defer logFile.Close()
	argv := append(slices.Clone(opts.HolderCommand), "--socket", socket)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = logFile // Stdin and Stdout nil: /dev/null
	cmd.Dir = "/"
	cmd.Env = holderEnv(os.Environ())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start fd-holder %q: %w", argv, err)
	}
	log = log.WithField("holder_pid", cmd.Process.Pid)
	log.Info("started an fd-holder")
	exited := make(chan struct{})
	var exitErr error
	go func() { // reap it whenever it ends, while this process lives
		exitErr = cmd.Wait()
		var ee *exec.ExitError
		if errors.As(exitErr, &ee) && ee.ExitCode() == 3 {
			log.Info("the fd-holder this process started found another one serving the socket, and left")
		} else {
			log.WithError(exitErr).Warn("the fd-holder this process started exited: descriptors it kept are gone")
		}
		close(exited)
	}()

	// Wait until the socket accepts. If our holder exits with status 3, another one started at
	// the same time won the socket: wait for that one.
	until := deadline(ctx)
	pause := 2 * time.Millisecond
	for {
		c, err := net.DialTimeout("unixpacket", socket, time.Until(until))
		if err == nil {
			c.Close()
			waitLoser(cmd.Process, socket, exited, until, log)
			return nil
		}
		select {
		case <-exited:
			var ee *exec.ExitError
			if !errors.As(exitErr, &ee) || ee.ExitCode() != 3 {
				return fmt.Errorf("start fd-holder: it exited (%v) before %s accepted: see %s", exitErr, socket, logPath)
			}
			exited = nil
		default:
		}
		if !time.Now().Add(pause).Before(until) {
			return fmt.Errorf("start fd-holder: %s does not accept (%w): see %s", socket, err, logPath)
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return fmt.Errorf("start fd-holder: %w", ctx.Err())
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// waitLoser returns once the holder we started either serves socket (its pid is in the
// pidfile) or has left. A holder that lost the start to another one leaves (status 3), but
// only once it reached the lock: left running, it would take over the socket the day the
// serving holder stops. One that has not left by the deadline is killed: it keeps nothing.
func waitLoser(p *os.Process, socket string, exited <-chan struct{}, until time.Time, log *logrus.Entry) {
	for {
		if b, err := os.ReadFile(socket + ".pid"); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(p.Pid) {
			return
		}
		if exited == nil {
			return
		}
		select {
		case <-exited:
			return
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(until) {
			log.Warn("the fd-holder this process started neither serves nor leaves while another one serves: killing it")
			p.Kill()
			return
		}
	}
}

// holderEnv is the daemon's environment without what is meant for the daemon alone: a holder
// must neither notify systemd nor take socket-activated descriptors.
func holderEnv(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
			return true
		}
		return false
	})
}

func (s *holderStore) Kind() string { return "holder" }

func (s *holderStore) Put(ctx context.Context, name string, f *os.File) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := s.call(ctx, storeRequest(name), f); err != nil {
		return fmt.Errorf("keep descriptor %q in the fd-holder: %w", name, err)
	}
	return nil
}

func (s *holderStore) Remove(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := s.call(ctx, removeRequest(name), nil); err != nil {
		return fmt.Errorf("remove descriptor %q from the fd-holder: %w", name, err)
	}
	return nil
}

func (s *holderStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// dial connects to the holder, with a deadline for the whole exchange (ctx's, at most the
// default timeout) that ctx's cancellation brings forward.
func (s *holderStore) dial(ctx context.Context) (*net.UnixConn, func(), error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, nil, errors.New("store closed")
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: s.socket, Net: "unixpacket"})
	if err != nil {
		return nil, nil, fmt.Errorf("no fd-holder on %s (was it stopped?): %w", s.socket, err)
	}
	c.SetDeadline(deadline(ctx))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return c, func() { stop(); c.Close() }, nil
}

// call sends one request and reads its OK=1 or ERROR= reply.
func (s *holderStore) call(ctx context.Context, request string, f *os.File) error {
	c, done, err := s.dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	if err := sendFile(c, request, f); err != nil {
		return fmt.Errorf("send to the fd-holder: %w", err)
	}
	m, err := s.reply(c)
	if err != nil {
		return err
	}
	if !m.is(keyOK) {
		return fmt.Errorf("fd-holder sent %q, want OK=1", m)
	}
	return nil
}

// reply reads one reply without descriptors; ERROR= becomes an error.
func (s *holderStore) reply(c *net.UnixConn) (message, error) {
	r, err := receive(c)
	if err != nil {
		return nil, fmt.Errorf("read the fd-holder's reply: %w", err)
	}
	r.closeFDs()
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("fd-holder's reply: %w", err)
	}
	m, err := parseMessage(r.text)
	if err != nil {
		return nil, fmt.Errorf("fd-holder's reply: %w", err)
	}
	if e, ok := m[keyError]; ok {
		return nil, fmt.Errorf("fd-holder refused: %s", e)
	}
	return m, nil
}

// list asks for every kept descriptor.
func (s *holderStore) list(ctx context.Context) (files map[string]*os.File, err error) {
	c, done, err := s.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	files = map[string]*os.File{}
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			files = nil
		}
	}()
	if err := sendFile(c, listRequest(), nil); err != nil {
		return nil, fmt.Errorf("send to the fd-holder: %w", err)
	}
	for {
		r, err := receive(c)
		if err != nil {
			return nil, fmt.Errorf("read the fd-holder's list: %w", err)
		}
		if err := r.check(); err != nil {
			r.closeFDs()
			return nil, fmt.Errorf("fd-holder's list: %w", err)
		}
		m, err := parseMessage(r.text)
		if err != nil {
			r.closeFDs()
			return nil, fmt.Errorf("fd-holder's list: %w", err)
		}
		switch name, named := m[keyName]; {
		case m.is(keyEnd):
			r.closeFDs()
			return files, nil
		case m[keyError] != "":
			r.closeFDs()
			return nil, fmt.Errorf("fd-holder refused to list: %s", m[keyError])
		case named && len(r.fds) == 1 && ValidName(name) == nil:
			if old, ok := files[name]; ok {
				old.Close()
			}
			files[name] = os.NewFile(uintptr(r.fds[0]), name)
		default:
			r.closeFDs()
			return nil, fmt.Errorf("fd-holder's list: unexpected %q with %d descriptors", r.text, len(r.fds))
		}
	}
}
