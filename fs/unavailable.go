package fs

import (
	"context"
	"fmt"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// unavailableRoot is the root of a layer that cannot be served (its TOC is lost): every
// lookup and listing fails with EIO, so that containers see errors, never an empty layer.
type unavailableRoot struct{ gofs.Inode }

var (
	_ gofs.NodeLookuper  = (*unavailableRoot)(nil)
	_ gofs.NodeReaddirer = (*unavailableRoot)(nil)
	_ gofs.NodeStatfser  = (*unavailableRoot)(nil)
)

func (r *unavailableRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EIO
}

func (r *unavailableRoot) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return nil, syscall.EIO
}

func (r *unavailableRoot) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.NameLen = maxNameLength
	out.Bsize = 4096
	return gofs.OK
}

// MountUnavailable mounts, at mountpoint, a layer that answers every access with EIO: the
// degraded form of a streamed layer that could not be restored.
func MountUnavailable(mountpoint string) (*Mounted, error) {
	server, err := gofs.Mount(mountpoint, &unavailableRoot{}, &gofs.Options{
		MountOptions: fuse.MountOptions{FsName: "rill-unavailable", Name: "rill", AllowOther: true, Options: []string{"ro"}},
	})
	if err != nil {
		return nil, fmt.Errorf("mount unavailable layer at %s: %w", mountpoint, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Mounted{server: server, mountpoint: mountpoint, ctx: ctx, cancel: cancel}, nil
}
