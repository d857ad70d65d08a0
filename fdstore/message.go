package fdstore

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Limits of the wire format, shared by the holder and its clients.
const (
	// MaxNameLen is systemd's limit for FDNAME (FDNAME_MAX).
	MaxNameLen = 255
	// maxMessage bounds the text of one message (a request or a reply). A request is at most
	// "FDSTOREREMOVE=1\nFDNAME=" and a name, far below it.
	maxMessage = 4096
	// maxMessageFDs is the room for descriptors when receiving one message: a request carries at
	// most one; more than this is reported as "too many descriptors" (the kernel closes what
	// did not fit).
	maxMessageFDs = 16
)

// Keys of the messages. The holder speaks systemd's sd_notify keys plus LIST, OK, ERROR, END.
const (
	keyStore  = "FDSTORE"
	keyRemove = "FDSTOREREMOVE"
	keyName   = "FDNAME"
	keyList   = "LIST"
	keyOK     = "OK"
	keyError  = "ERROR"
	keyEnd    = "END"
)

// ValidName reports whether name may name a kept descriptor. The rule is systemd's (fdname_is_valid):
// printable ASCII (0x20 to 0x7e) except ':', which separates names in LISTEN_FDNAMES, at most
// 255 bytes. Unlike systemd, the empty name is refused too: systemd would rename it "stored".
func ValidName(name string) error {
	if name == "" {
		return errors.New("empty descriptor name: name every kept descriptor")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("descriptor name of %d bytes: systemd allows at most %d", len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e || c == ':' {
			return fmt.Errorf("descriptor name %q has byte %#x at %d: names are printable ASCII without ':' (systemd's FDNAME rule)", name, c, i)
		}
	}
	return nil
}

func storeRequest(name string) string  { return keyStore + "=1\n" + keyName + "=" + name }
func removeRequest(name string) string { return keyRemove + "=1\n" + keyName + "=" + name }
func listRequest() string              { return keyList + "=1" }
func listEntry(name string) string     { return keyName + "=" + name }
func okReply() string                  { return keyOK + "=1" }
func endReply() string                 { return keyEnd + "=1" }

func errorReply(err error) string {
	return keyError + "=" + strings.ReplaceAll(err.Error(), "\n", " ")
}

// message is the text of one message: newline-separated KEY=VALUE assignments, as sd_notify's.
type message map[string]string

func parseMessage(text []byte) (message, error) {
	m := message{}
	for _, line := range strings.Split(string(text), "\n") {
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("line %q is not KEY=VALUE", line)
		}
		m[k] = v
	}
	return m, nil
}

func (m message) is(key string) bool { return m[key] == "1" }

// received is one message read from a socket, with the descriptors it carried (close-on-exec).
// Whoever receives it owns the descriptors: keep them or close them with closeFDs.
type received struct {
	text  []byte
	fds   []int
	flags int
}

func (r *received) closeFDs() {
	for _, fd := range r.fds {
		unix.Close(fd)
	}
	r.fds = nil
}

// check refuses a message the receiver's buffers could not hold whole.
func (r *received) check() error {
	if r.flags&unix.MSG_TRUNC != 0 {
		return fmt.Errorf("message larger than %d bytes: requests are a few KEY=VALUE lines", maxMessage)
	}
	if r.flags&unix.MSG_CTRUNC != 0 {
		return fmt.Errorf("descriptors lost in transit: more than %d in one message (send one per FDSTORE), or the receiver ran out of descriptors (RLIMIT_NOFILE)", maxMessageFDs)
	}
	return nil
}

// receive reads one message from c. Go's ReadMsgUnix passes MSG_CMSG_CLOEXEC on Linux, so the
// descriptors are never inherited by children.
func receive(c *net.UnixConn) (received, error) {
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(maxMessageFDs*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	r := received{text: buf[:max(n, 0)], flags: flags}
	if oobn > 0 {
		r.fds = parseRights(oob[:oobn])
	}
	if err != nil {
		r.closeFDs()
		return r, err
	}
	return r, nil
}

func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

// errFileClosed is sendFile's error when the file to send is closed.
var errFileClosed = errors.New("descriptor closed")

// sendFile sends text with f's descriptor attached (or no descriptor when f is nil). It holds a
// reference on f while sending, so a concurrent Close cannot make the number name another file.
func sendFile(c *net.UnixConn, text string, f *os.File) error {
	if f == nil {
		_, _, err := c.WriteMsgUnix([]byte(text), nil, nil)
		return err
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errFileClosed, f.Name(), err)
	}
	var sendErr error
	if err := raw.Control(func(fd uintptr) {
		_, _, sendErr = c.WriteMsgUnix([]byte(text), unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return fmt.Errorf("%w: %s: %w", errFileClosed, f.Name(), err)
	}
	return sendErr
}
