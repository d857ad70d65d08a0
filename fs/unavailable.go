package fs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// unavailableFS is a layer that cannot be served (its TOC is lost): its root is an empty-looking
// directory whose every lookup and listing fails with EIO, so that containers see errors, never
// an empty layer.
type unavailableFS struct{ fuse.RawFileSystem }

func (unavailableFS) String() string { return "rill-unavailable" }

func (unavailableFS) Lookup(<-chan struct{}, *fuse.InHeader, string, *fuse.EntryOut) fuse.Status {
	return fuse.EIO
}

func (unavailableFS) Forget(uint64, uint64) {}

func (unavailableFS) GetAttr(_ <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.NodeId != fuse.FUSE_ROOT_ID {
		return fuse.EIO
	}
	out.Ino = fuse.FUSE_ROOT_ID
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	return fuse.OK
}

func (unavailableFS) OpenDir(<-chan struct{}, *fuse.OpenIn, *fuse.OpenOut) fuse.Status {
	return fuse.OK
}
func (unavailableFS) ReleaseDir(*fuse.ReleaseIn) {}
func (unavailableFS) ReadDir(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status {
	return fuse.EIO
}
func (unavailableFS) ReadDirPlus(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status {
	return fuse.EIO
}
func (unavailableFS) Open(<-chan struct{}, *fuse.OpenIn, *fuse.OpenOut) fuse.Status { return fuse.EIO }
func (unavailableFS) Read(<-chan struct{}, *fuse.ReadIn, []byte) (fuse.ReadResult, fuse.Status) {
	return nil, fuse.EIO
}
func (unavailableFS) Release(<-chan struct{}, *fuse.ReleaseIn)         {}
func (unavailableFS) Flush(<-chan struct{}, *fuse.FlushIn) fuse.Status { return fuse.OK }

func (unavailableFS) StatFs(_ <-chan struct{}, _ *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.NameLen = maxNameLength
	out.Bsize = blockSize
	return fuse.OK
}

func newUnavailable(log *logrus.Entry) fuse.RawFileSystem {
	return unavailableFS{fuse.NewDefaultRawFileSystem()}
}

// MountUnavailable mounts, at mountpoint, a layer that answers every access with EIO: the
// degraded form of a streamed layer that could not be restored.
func MountUnavailable(mountpoint string) (*Mounted, error) {
	log := logrus.WithField("mountpoint", mountpoint)
	dev, err := openDevice(mountpoint, "rill-unavailable")
	if err != nil {
		return nil, fmt.Errorf("mount unavailable layer: %w", err)
	}
	c, err := newConn(dev, newUnavailable(log), log)
	if err == nil {
		_, err = c.handshake(handshakeTimeout)
	}
	if err != nil {
		unix.Unmount(mountpoint, unix.MNT_DETACH)
		dev.Close()
		return nil, fmt.Errorf("mount unavailable layer at %s: %w", mountpoint, err)
	}
	m := start(c, mountpoint, nil, nil, MountOptions{Log: log})
	if err := disablePoll(mountpoint); err != nil {
		log.WithError(err).Warn("FUSE poll left on")
	}
	return m, nil
}

// ResumeUnavailable serves a kept connection (see Resume) whose layer cannot be restored: every
// access fails with EIO, as in MountUnavailable. Where even that cannot be done (the state of
// the connection is lost), the connection is aborted: its users get ENOTCONN, never a hang.
// The mount stays in place either way; the caller unmounts it when it replaces it.
func ResumeUnavailable(ctx context.Context, dev *os.File, mountpoint, stateDir string) (*Mounted, error) {
	log := logrus.WithField("mountpoint", mountpoint)
	state, err := readConnState(stateDir)
	if err == nil {
		var own *os.File
		own, err = adoptDevice(dev)
		if err == nil {
			var c *conn
			c, err = newConn(own, newUnavailable(log), log)
			if err == nil {
				err = c.replayInit(state.Init)
			}
			if err == nil {
				m := start(c, mountpoint, nil, nil, MountOptions{Log: log})
				if rerr := c.resend(); rerr != nil {
					log.WithError(rerr).Debug("FUSE_NOTIFY_RESEND")
				}
				return m, nil
			}
			own.Close()
		}
	}
	if aerr := Abort(mountpoint); aerr != nil {
		return nil, fmt.Errorf("kept connection of %s: cannot serve it (%w) nor abort it: %w", mountpoint, err, aerr)
	}
	return nil, fmt.Errorf("kept connection of %s aborted: %w", mountpoint, err)
}

// Abort aborts the FUSE connection mounted at mountpoint (through the fusectl filesystem,
// mounted at /sys/fs/fuse/connections if it is not): every request waiting on it, and every
// later one, fails with ENOTCONN. It does not touch the mountpoint itself, which would wait on
// the connection.
func Abort(mountpoint string) error {
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(filepath.Clean(mountpoint)))
	if err != nil {
		return fmt.Errorf("find mount %s: %w", mountpoint, err)
	}
	if len(infos) == 0 {
		return nil // nothing mounted: nothing to abort
	}
	info := infos[len(infos)-1]
	if !strings.HasPrefix(info.FSType, "fuse") {
		return fmt.Errorf("%s is a %s mount, not FUSE", mountpoint, info.FSType)
	}
	const ctl = "/sys/fs/fuse/connections"
	if _, err := os.Stat(filepath.Join(ctl, strconv.Itoa(info.Minor))); err != nil {
		if err := unix.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount fusectl at %s: %w", ctl, err)
		}
	}
	// Connections are named by the kernel's device number of their superblock: major 0, so
	// the minor.
	if err := os.WriteFile(filepath.Join(ctl, strconv.Itoa(info.Minor), "abort"), []byte("1"), 0); err != nil {
		return fmt.Errorf("abort FUSE connection of %s: %w", mountpoint, err)
	}
	return nil
}
