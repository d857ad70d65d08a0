package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/internal/testlayer"
	"golang.org/x/sys/unix"
)

// gatedBlob serves data; while closed, reads wait until it opens.
type gatedBlob struct {
	data    []byte
	gate    atomic.Pointer[chan struct{}]
	waiting atomic.Int64
}

func (b *gatedBlob) close() { g := make(chan struct{}); b.gate.Store(&g) }
func (b *gatedBlob) open() {
	if g := b.gate.Swap(nil); g != nil {
		close(*g)
	}
}

func (b *gatedBlob) ReadAt(p []byte, off int64) (int, error) {
	if g := b.gate.Load(); g != nil {
		b.waiting.Add(1)
		<-*g
		b.waiting.Add(-1)
	}
	if off >= int64(len(b.data)) {
		return 0, errors.New("read past the end")
	}
	return copy(p, b.data[off:]), nil
}

// keepDevice duplicates a layer's /dev/fuse descriptor, as the fd store keeps it.
func keepDevice(t *testing.T, m *Mounted) *os.File {
	t.Helper()
	fd, err := unix.FcntlInt(m.Device().Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "kept")
	t.Cleanup(func() { f.Close() })
	return f
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A layer served by one process and stopped is served again by the next (Resume) on the same
// connection: files open across the hand-over keep reading (through rill, and through
// passthrough), a read the first process took and never answered is answered by the second,
// node IDs and inode numbers do not change, and the io modes of the inodes carry over.
func TestResumeServesTheSameConnection(t *testing.T) {
	big := testlayer.Reg("big", testlayer.RandomBytes(31, 600<<10), 0o644)
	complete := testlayer.Reg("complete", testlayer.RandomBytes(32, 200<<10), 0o644)
	late := testlayer.Reg("dir/late", testlayer.RandomBytes(33, 100<<10), 0o644)
	small := testlayer.Reg("dir/small", []byte("small file\n"), 0o600)
	entries := []testlayer.Entry{testlayer.Dir("dir", 0o755), big, complete, late, small}
	data, l := convertedBlob(t, entries)
	state := t.TempDir()
	metrics := NewMetrics()
	blob := &gatedBlob{data: data}
	m := mountConvertedFrom(t, data, l, blob, MountOptions{StateDir: state, Metrics: metrics})
	mnt := m.mountpoint

	// A file open and half read, one open with passthrough, inode numbers.
	fBig, err := os.Open(filepath.Join(mnt, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer fBig.Close()
	half := make([]byte, 300<<10)
	if _, err := fBig.ReadAt(half, 0); err != nil || !bytes.Equal(half, big.Body[:len(half)]) {
		t.Fatalf("read before the hand-over: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "complete")); err != nil || !bytes.Equal(got, complete.Body) {
		t.Fatalf("read complete: %v", err)
	}
	waitReleased(t, m, "complete")
	dropAllPageCaches(t)
	fPass, err := os.Open(filepath.Join(mnt, "complete"))
	if err != nil {
		t.Fatal(err)
	}
	defer fPass.Close()
	if n := testutil.ToFloat64(metrics.passthroughOpens); n != 1 {
		t.Fatalf("%v passthrough opens, want 1", n)
	}
	inodes := map[string]uint64{}
	for _, p := range []string{"big", "complete", "dir", "dir/small", "dir/late"} {
		inodes[p] = inode(t, filepath.Join(mnt, p))
	}

	// A read the first process takes and cannot answer before it stops.
	blob.close()
	lateRead := make(chan error, 1)
	go func() {
		got, err := os.ReadFile(filepath.Join(mnt, "dir/late"))
		if err == nil && !bytes.Equal(got, late.Body) {
			err = errors.New("wrong bytes")
		}
		lateRead <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for blob.waiting.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the read never reached the blob")
		}
		time.Sleep(time.Millisecond)
	}

	kept := keepDevice(t, m)
	m.Stop()
	select {
	case err := <-lateRead:
		t.Fatalf("the read ended while nobody served the layer: %v", err)
	default:
	}

	// The next process: a fresh index from the same TOC, the same state directory.
	idx := freshIndex(t, data, l.TOCDigest.String())
	m2, err := Resume(context.Background(), kept, mnt, idx, bytes.NewReader(data), MountOptions{StateDir: state, Cache: m.lfs.cache, Metrics: metrics, ReadTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m2.Unmount(context.Background()) })
	defer blob.open() // let the first process's abandoned read end

	select {
	case err := <-lateRead:
		if err != nil {
			t.Fatalf("the read left by the first process: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read left by the first process was never answered")
	}
	rest := make([]byte, len(big.Body)-len(half))
	if _, err := fBig.ReadAt(rest, int64(len(half))); err != nil || !bytes.Equal(rest, big.Body[len(half):]) {
		t.Fatalf("read after the hand-over through a handle of the first process: %v", err)
	}
	got := make([]byte, len(complete.Body))
	if _, err := fPass.ReadAt(got, 0); err != nil || !bytes.Equal(got, complete.Body) {
		t.Fatalf("passthrough file opened before the hand-over: %v", err)
	}
	for p, ino := range inodes {
		if now := inode(t, filepath.Join(mnt, p)); now != ino {
			t.Errorf("%s: inode %d after the hand-over, %d before", p, now, ino)
		}
	}
	names, err := os.ReadDir(filepath.Join(mnt, "dir"))
	if err != nil || len(names) != 2 {
		t.Fatalf("listing after the hand-over: %v %v", names, err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "dir/small")); err != nil || !bytes.Equal(got, small.Body) {
		t.Fatalf("a file first opened after the hand-over: %v", err)
	}
	// The inode of "complete" is in passthrough mode: a second open joins it (same backing
	// file), and once every open is closed it starts afresh.
	passOpen := func(what string) {
		t.Helper()
		before := testutil.ToFloat64(metrics.passthroughOpens)
		got, err := os.ReadFile(filepath.Join(mnt, "complete"))
		if err != nil || !bytes.Equal(got, complete.Body) {
			t.Fatalf("%s: %v", what, err)
		}
		if n := testutil.ToFloat64(metrics.passthroughOpens) - before; n != 1 {
			t.Fatalf("%s: %v passthrough opens, want 1", what, n)
		}
	}
	passOpen("second open of a passthrough inode after the hand-over")
	fPass.Close()
	waitReleased(t, m2, "complete")
	dropAllPageCaches(t)
	passOpen("open after every passthrough open was closed")
}

func freshIndex(t *testing.T, data []byte, tocDigest string) *Index {
	t.Helper()
	toc, err := LoadTOC(context.Background(), bytes.NewReader(data), int64(len(data)), mustDigest(t, tocDigest), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := NewIndex(toc)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// A kept connection whose layer is another than the one the state describes is not resumed;
// served as unavailable, it answers EIO, never hangs.
func TestResumeRefusesAnotherLayerAndServesItUnavailable(t *testing.T) {
	entries := []testlayer.Entry{testlayer.Reg("a", []byte("a"), 0o644), testlayer.Reg("b", []byte("b"), 0o644)}
	data, l := convertedBlob(t, entries)
	state := t.TempDir()
	m := mountConverted(t, data, l, &switchableBlob{}, MountOptions{StateDir: state})
	kept := keepDevice(t, m)
	m.Stop()

	other, ol := convertedBlob(t, []testlayer.Entry{testlayer.Reg("c", []byte("c"), 0o644)})
	_, err := Resume(context.Background(), kept, m.mountpoint, freshIndex(t, other, ol.TOCDigest.String()), bytes.NewReader(other), MountOptions{StateDir: state})
	if !errors.Is(err, ErrNotResumable) {
		t.Fatalf("resume with another layer: %v, want ErrNotResumable", err)
	}
	u, err := ResumeUnavailable(context.Background(), kept, m.mountpoint, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Unmount(context.Background()) })
	if _, err := os.ReadFile(filepath.Join(m.mountpoint, "a")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of an unavailable layer: %v, want EIO", err)
	}
}

// A kept connection whose state is lost is aborted: its users get ENOTCONN, never a hang.
func TestResumeUnavailableWithoutStateAborts(t *testing.T) {
	data, l := convertedBlob(t, []testlayer.Entry{testlayer.Reg("a", []byte("a"), 0o644)})
	m := mountConverted(t, data, l, &switchableBlob{}, MountOptions{})
	kept := keepDevice(t, m)
	m.Stop()
	if _, err := ResumeUnavailable(context.Background(), kept, m.mountpoint, t.TempDir()); err == nil {
		t.Fatal("a connection without state was resumed")
	}
	if _, err := os.ReadFile(filepath.Join(m.mountpoint, "a")); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("read of an aborted layer: %v, want ENOTCONN", err)
	}
	unix.Unmount(m.mountpoint, unix.MNT_DETACH)
}

// A kept connection whose mount was detached meanwhile (umount -l: running containers may still
// use it) is not resumed: a new container would find an empty directory where the layer was.
func TestResumeRefusesADetachedMount(t *testing.T) {
	data, l := convertedBlob(t, []testlayer.Entry{testlayer.Reg("a", []byte("a"), 0o644)})
	state := t.TempDir()
	m := mountConverted(t, data, l, &switchableBlob{}, MountOptions{StateDir: state})
	kept := keepDevice(t, m)
	m.Stop()
	if err := unix.Unmount(m.mountpoint, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	_, err := Resume(context.Background(), kept, m.mountpoint, freshIndex(t, data, l.TOCDigest.String()), bytes.NewReader(data), MountOptions{StateDir: state})
	if !errors.Is(err, ErrNotResumable) {
		t.Fatalf("resume of a detached mount: %v, want ErrNotResumable", err)
	}
}
