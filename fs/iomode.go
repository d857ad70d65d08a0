package fs

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The kernel's io mode of each inode, kept where the next process finds it.
//
// The kernel refuses (EIO) an open whose mode conflicts with the inode's other open files: a
// passthrough open while the inode has files open in cached mode, a cached open while it has
// passthrough ones, or a passthrough open with another backing file than the inode's. Open
// handles outlive a restart of rill-snapshotter (the connection does), so the next process
// must know, per inode, how many files are open in each mode and which backing ID the
// passthrough ones share. The table is a file in the layer's state directory, mapped shared:
// every change is in the page cache the moment it is made, so a process killed at any point
// leaves it as true as its last change (at worst a count too high: a backing file kept
// registered until the layer is unmounted).

// ioRecord is one inode's: backing ID, passthrough opens, cached opens (int32 each), padding.
const ioRecord = 16

const ioModeFile = "fuse-iomode"

type ioModes struct {
	mu   sync.Mutex
	data []byte // nodes × ioRecord; mmap'd, or in memory without a state directory
	file bool
}

// newIOModes makes a table for nodes inodes. With dir, the table is the file there: one left by
// an earlier process of the same connection is kept (resume), else a new one is made.
func newIOModes(dir string, nodes int, resume bool) (*ioModes, error) {
	size := nodes * ioRecord
	if dir == "" {
		return &ioModes{data: make([]byte, size)}, nil
	}
	path := dir + "/" + ioModeFile
	flags := os.O_RDWR | os.O_CREATE
	if !resume {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("io mode table: %w", err)
	}
	defer f.Close()
	if resume {
		st, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("io mode table: %w", err)
		}
		if st.Size() != int64(size) {
			return nil, fmt.Errorf("io mode table %s holds %d bytes, want %d: %w", path, st.Size(), size, ErrNotResumable)
		}
	} else if err := f.Truncate(int64(size)); err != nil {
		return nil, fmt.Errorf("io mode table: %w", err)
	}
	if size == 0 {
		return &ioModes{}, nil
	}
	data, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map io mode table: %w", err)
	}
	return &ioModes{data: data, file: true}, nil
}

func (m *ioModes) get(id uint64, field int) int32 {
	off := int(id-1)*ioRecord + 4*field
	return int32(binary.LittleEndian.Uint32(m.data[off:]))
}

func (m *ioModes) set(id uint64, field int, v int32) {
	off := int(id-1)*ioRecord + 4*field
	binary.LittleEndian.PutUint32(m.data[off:], uint32(v))
}

const (
	fieldBacking = 0
	fieldPass    = 1
	fieldCached  = 2
)

// close unmaps the table; it stays on disk for the next process.
func (m *ioModes) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.file && m.data != nil {
		unix.Munmap(m.data)
	}
	m.data = nil
}
