package fs

import (
	"encoding/binary"
	"errors"
	"fmt"
	stdlog "log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// A conn serves one FUSE connection: the /dev/fuse descriptor of a mounted layer. It mounts
// the layer itself (mount(2) with fd=N, as fusermount does) rather than through go-fuse's
// Server, because a connection outlives the process that serves it: the descriptor is kept
// (fdstore) across a restart, and the next process serves it again without the INIT
// handshake, which the kernel sends only once. So the conn keeps the INIT request it answered
// in its state directory, and a resumed conn replays it into a fresh fuse.ProtocolServer, which
// then decodes requests as the first one did. Requests go to a fuse.RawFileSystem whose node
// IDs and file handles mean the same in every process (see inode.go and handle.go).

// maxWrite bounds a request's payload and a reply's: 128 KiB, go-fuse's default (the kernel's
// reads of a file come in pieces of at most this size).
const maxWrite = 128 << 10

// bufSize is the size of the buffers requests are read into and replies written from.
const bufSize = maxWrite + 4096

// notifyResend is FUSE_NOTIFY_RESEND (Linux 6.9): the kernel queues again every request the
// connection's earlier reader took but did not answer.
const notifyResend = 7

// The /dev/fuse ioctls of passthrough (Linux 6.9): register a backing file, unregister it.
const (
	iocBackingOpen  = 0x4010e501 // _IOW(229, 1, struct fuse_backing_map)
	iocBackingClose = 0x4004e502 // _IOW(229, 2, uint32_t)
)

// initFile holds, in a layer's state directory, the INIT request the connection answered.
const initFile = "fuse-init"

type conn struct {
	dev  *os.File // the connection; kept by the layer, handed to fdstore
	fd   int      // dev's descriptor, non-blocking: read, written and polled directly
	wake [2]int   // a pipe: Stop writes to it to end the loop
	ps   *fuse.ProtocolServer
	log  *logrus.Entry

	pool sync.Pool // of *[]byte of bufSize

	inflight sync.WaitGroup // requests being answered
	wakeMu   sync.Mutex
	wakeGone bool // the pipe is closed (the loop ended)

	// done is closed when the loop ended: the connection is gone (unmounted, aborted) or Stop
	// was called. err says which.
	done chan struct{}
	err  error
}

// errConnStopped ends a loop stopped by Stop: the connection is alive, served by nobody.
var errConnStopped = errors.New("connection handed over")

// The loop does not use Go's poller: a process that opens files of its own mounts (tests do)
// would register them with the same epoll instance, and the kernel asks the FUSE server (this
// loop) whether such a file is ready while holding that instance's lock — a deadlock. So the
// descriptor is read after poll(2), on a thread of its own, with a pipe to wake it; and at
// mount the kernel is told that the server does not answer FUSE_POLL (disablePoll).

func newConn(dev *os.File, rfs fuse.RawFileSystem, log *logrus.Entry) (*conn, error) {
	var fd int
	raw, err := dev.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("fuse descriptor: %w", err)
	}
	if err := raw.Control(func(d uintptr) { fd = int(d) }); err != nil {
		return nil, fmt.Errorf("fuse descriptor: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("fuse descriptor: %w", err)
	}
	c := &conn{
		dev:  dev,
		fd:   fd,
		ps:   fuse.NewProtocolServer(rfs, &fuse.MountOptions{MaxWrite: maxWrite, MaxStackDepth: 1, Logger: stdLogger(log)}),
		log:  log,
		done: make(chan struct{}),
	}
	if err := unix.Pipe2(c.wake[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("wake pipe: %w", err)
	}
	c.pool.New = func() any { b := make([]byte, bufSize); return &b }
	return c, nil
}

// openDevice opens /dev/fuse and mounts a read-only FUSE filesystem served by it at
// mountpoint. The descriptor is opened blocking so that os.NewFile keeps it out of Go's
// poller; newConn makes it non-blocking.
func openDevice(mountpoint, fsName string) (*os.File, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,max_read=%d", fd, maxWrite)
	if err := unix.Mount(fsName, mountpoint, "fuse."+fsName, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mount fuse at %s: %w", mountpoint, err)
	}
	return os.NewFile(uintptr(fd), "/dev/fuse"), nil
}

// adoptDevice makes a kept connection descriptor this process's own: a duplicate, kept out of
// Go's poller (see openDevice).
func adoptDevice(f *os.File) (*os.File, error) {
	var dup int
	var derr error
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("kept fuse descriptor: %w", err)
	}
	if err := raw.Control(func(d uintptr) { dup, derr = unix.FcntlInt(d, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("kept fuse descriptor: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("duplicate kept fuse descriptor: %w", derr)
	}
	// O_NONBLOCK belongs to the open file, shared with every holder of it: off while os.NewFile
	// looks, so that it does not register the descriptor with the poller.
	if err := unix.SetNonblock(dup, false); err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("kept fuse descriptor: %w", err)
	}
	return os.NewFile(uintptr(dup), "/dev/fuse"), nil
}

// wait polls the connection and the wake pipe, up to timeout (negative: no limit). It reports
// whether a request can be read, and whether Stop was called.
func (c *conn) wait(timeout time.Duration) (readable, stopped bool, err error) {
	ms := -1
	if timeout >= 0 {
		ms = int(timeout / time.Millisecond)
	}
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}, {Fd: int32(c.wake[0]), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, false, fmt.Errorf("poll FUSE connection: %w", err)
		}
		if fds[1].Revents != 0 {
			return false, true, nil
		}
		// POLLERR: the connection was aborted or unmounted; the read says which.
		return fds[0].Revents != 0, false, nil
	}
}

// read reads one request into buf; 0 with no error when there is none (yet).
func (c *conn) read(buf []byte) (int, error) {
	n, err := unix.Read(c.fd, buf)
	switch err {
	case nil:
		return n, nil
	case unix.EAGAIN, unix.EINTR, unix.ENOENT: // none, interrupted, or withdrawn before read
		return 0, nil
	default:
		return 0, err
	}
}

// handshake answers the connection's INIT request, the first the kernel sends, and returns it.
func (c *conn) handshake(timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, bufSize)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, errors.New("no FUSE INIT from the kernel")
		}
		if _, _, err := c.wait(left); err != nil {
			return nil, err
		}
		n, err := c.read(buf)
		if err != nil {
			return nil, fmt.Errorf("read FUSE INIT: %w", err)
		}
		if n == 0 {
			continue
		}
		if n < 40 || binary.LittleEndian.Uint32(buf[4:8]) != opInit {
			return nil, fmt.Errorf("first FUSE request is not INIT (opcode %d)", binary.LittleEndian.Uint32(buf[4:8]))
		}
		req := append([]byte(nil), buf[:n]...)
		out := make([]byte, bufSize)
		w, st := c.ps.HandleRequest([][]byte{req}, [][]byte{out})
		if !st.Ok() {
			return nil, fmt.Errorf("answer FUSE INIT: %v", st)
		}
		if _, err := unix.Write(c.fd, out[:w]); err != nil {
			return nil, fmt.Errorf("answer FUSE INIT: %w", err)
		}
		return req, nil
	}
}

// opInit is FUSE_INIT's opcode.
const opInit = 26

// replayInit gives a fresh protocol server the INIT request the connection answered in an
// earlier process, so that it decodes requests as negotiated then; nothing is sent.
func (c *conn) replayInit(req []byte) error {
	if len(req) < 40 || binary.LittleEndian.Uint32(req[4:8]) != opInit {
		return errors.New("kept FUSE INIT request is damaged")
	}
	out := make([]byte, bufSize)
	if _, st := c.ps.HandleRequest([][]byte{append([]byte(nil), req...)}, [][]byte{out}); !st.Ok() {
		return fmt.Errorf("replay FUSE INIT: %v", st)
	}
	return nil
}

// pollHackName is the name go-fuse's protocol server answers, at the root of any mount, with
// a file whose FUSE_POLL it refuses (ENOSYS).
const pollHackName = ".go-fuse-epoll-hack"

// disablePoll makes the kernel stop asking this connection whether files are ready (FUSE_POLL):
// it polls a file the protocol server answers ENOSYS for, once, and the kernel remembers it for
// the life of the connection. Otherwise a Go program that opens files of the mount it serves
// deadlocks: Go registers every file it opens with its epoll instance, the kernel then asks the
// server while it holds that instance's lock, and the Go scheduler, which polls that instance
// too, cannot run the goroutine that would answer. The loop must be serving.
func disablePoll(mountpoint string) error {
	fd, err := unix.Open(filepath.Join(mountpoint, pollHackName), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("disable FUSE poll: %w", err)
	}
	defer unix.Close(fd)
	unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	return nil
}

// resend asks the kernel to queue again the requests an earlier reader of the connection took
// and did not answer (FUSE_NOTIFY_RESEND, Linux 6.9+). Older kernels refuse it: those requests
// then wait until the mount goes away.
func (c *conn) resend() error {
	var msg [16]byte
	binary.LittleEndian.PutUint32(msg[0:4], 16)
	binary.LittleEndian.PutUint32(msg[4:8], uint32(notifyResend)) // error field: the notify code
	if _, err := unix.Write(c.fd, msg[:]); err != nil {
		return fmt.Errorf("FUSE_NOTIFY_RESEND: %w", err)
	}
	return nil
}

// serve reads and answers requests until the connection ends or Stop is called; each request
// is answered in its own goroutine (reads may wait on the network).
func (c *conn) serve() {
	defer close(c.done)
	for {
		_, stopped, err := c.wait(-1)
		if err != nil {
			c.err = err
			return
		}
		if stopped {
			c.err = errConnStopped
			return
		}
		bp := c.pool.Get().(*[]byte)
		n, err := c.read(*bp)
		if err != nil || n == 0 {
			c.pool.Put(bp)
			if err == unix.ENODEV {
				return // unmounted: the connection is over
			}
			if err != nil {
				c.err = fmt.Errorf("read FUSE request: %w", err)
				return
			}
			continue
		}
		c.inflight.Add(1)
		go c.answer(bp, n)
	}
}

func (c *conn) answer(bp *[]byte, n int) {
	defer c.inflight.Done()
	defer c.pool.Put(bp)
	op := c.pool.Get().(*[]byte)
	defer c.pool.Put(op)
	w, st := c.ps.HandleRequest([][]byte{(*bp)[:n]}, [][]byte{*op})
	if !st.Ok() || w == 0 {
		return
	}
	if _, err := unix.Write(c.fd, (*op)[:w]); err != nil && err != unix.ENOENT {
		// ENOENT: the request was interrupted meanwhile. Anything else: the connection is
		// going away.
		c.log.WithError(err).Debug("write FUSE reply")
	}
}

// stop ends the loop without ending the connection: requests already read are answered
// for up to wait, then left to the next process (which has the kernel send them again).
func (c *conn) stop(wait time.Duration) {
	c.wakeMu.Lock()
	if !c.wakeGone {
		unix.Write(c.wake[1], []byte{1})
	}
	c.wakeMu.Unlock()
	<-c.done
	answered := make(chan struct{})
	go func() { c.inflight.Wait(); close(answered) }()
	select {
	case <-answered:
	case <-time.After(wait):
		c.log.Debug("requests still being answered at hand-over: the next process answers them")
	}
}

// close closes the descriptor once no request is being answered: a late reply must not be
// written to another file that reused the number.
func (c *conn) close() {
	go func() {
		c.inflight.Wait()
		c.dev.Close()
	}()
}

// closeWake closes the wake pipe once the loop has ended.
func (c *conn) closeWake() {
	c.wakeMu.Lock()
	defer c.wakeMu.Unlock()
	c.wakeGone = true
	unix.Close(c.wake[0])
	unix.Close(c.wake[1])
}

// backingOpen registers f as a backing file of the connection (passthrough); the kernel then
// holds it.
func (c *conn) backingOpen(f *os.File) (int32, error) {
	var m struct {
		Fd      int32
		Flags   uint32
		Padding uint64
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var id uintptr
	var errno syscall.Errno
	if err := raw.Control(func(d uintptr) {
		m.Fd = int32(d)
		id, _, errno = unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), iocBackingOpen, uintptr(unsafe.Pointer(&m)))
	}); err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return int32(id), nil
}

// backingClose unregisters a backing file; files opened with it keep reading it.
func (c *conn) backingClose(id int32) error {
	v := uint32(id)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), iocBackingClose, uintptr(unsafe.Pointer(&v))); errno != 0 {
		return errno
	}
	return nil
}

// writeFileAtomic writes data to path through a temporary file and a rename.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// stdLogger adapts log for go-fuse's logger: what go-fuse reports is logged at debug level.
func stdLogger(log *logrus.Entry) *stdlog.Logger {
	return stdlog.New(debugWriter{log.WithField("component", "go-fuse")}, "", 0)
}

type debugWriter struct{ log *logrus.Entry }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}
