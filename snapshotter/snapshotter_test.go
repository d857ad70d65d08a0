package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	bolterrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("these tests mount overlayfs and must run as root (make test runs them as root)")
	}
}

// TestConformance runs containerd's snapshotter test suite against rill's snapshotter, with
// synchronous and with asynchronous removal.
func TestConformance(t *testing.T) {
	requireRoot(t)
	for _, async := range []bool{false, true} {
		name := "SyncRemove"
		if async {
			name = "AsyncRemove"
		}
		t.Run(name, func(t *testing.T) {
			testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
				sn, err := NewSnapshotter(ctx, root, WithAsyncRemove(async))
				if err != nil {
					return nil, nil, err
				}
				return sn, sn.Close, nil
			})
		})
	}
}

func newTestSnapshotter(t *testing.T, opts ...Option) (context.Context, *Snapshotter) {
	t.Helper()
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	sn, err := NewSnapshotter(ctx, t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return ctx, sn
}

func snapshotDirs(t *testing.T, sn *Snapshotter) []string {
	t.Helper()
	entries, err := os.ReadDir(sn.snapshotsDir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// With asynchronous removal the directory stays until Cleanup; Cleanup then frees the space.
func TestAsyncRemoveDefersDirectoryToCleanup(t *testing.T) {
	ctx, sn := newTestSnapshotter(t, WithAsyncRemove(true))
	if _, err := sn.Prepare(ctx, "layer-1-active", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "layer-1", "layer-1-active"); err != nil {
		t.Fatal(err)
	}
	if got := snapshotDirs(t, sn); len(got) != 1 {
		t.Fatalf("want one snapshot directory, got %v", got)
	}
	if err := sn.Remove(ctx, "layer-1"); err != nil {
		t.Fatal(err)
	}
	if got := snapshotDirs(t, sn); len(got) != 1 {
		t.Fatalf("async remove deleted the directory before Cleanup: %v", got)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := snapshotDirs(t, sn); len(got) != 0 {
		t.Fatalf("Cleanup left directories: %v", got)
	}
}

// A removed snapshot whose directory still has something mounted in it (a streamed layer's
// FUSE mount, a leaked bind mount) is unmounted before deletion, so deletion never reaches
// through the mount into content that is not the snapshot's.
func TestCleanupUnmountsBeforeDeleting(t *testing.T) {
	for _, async := range []bool{false, true} {
		ctx, sn := newTestSnapshotter(t, WithAsyncRemove(async))
		if _, err := sn.Prepare(ctx, "active", ""); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, "committed", "active"); err != nil {
			t.Fatal(err)
		}
		dirs := snapshotDirs(t, sn)
		if len(dirs) != 1 {
			t.Fatalf("want one snapshot directory, got %v", dirs)
		}
		id := dirs[0]
		precious := t.TempDir()
		if err := os.WriteFile(filepath.Join(precious, "keep"), []byte("not the snapshot's"), 0o644); err != nil {
			t.Fatal(err)
		}
		mountpoint := filepath.Join(sn.snapshotsDir(), id, "fs")
		if err := unix.Mount(precious, mountpoint, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		if err := sn.Remove(ctx, "committed"); err != nil {
			unix.Unmount(mountpoint, unix.MNT_DETACH)
			t.Fatal(err)
		}
		if err := sn.Cleanup(ctx); err != nil {
			unix.Unmount(mountpoint, unix.MNT_DETACH)
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(precious, "keep")); err != nil {
			t.Fatalf("async=%v: content behind a mount in a removed snapshot was deleted: %v", async, err)
		}
		if got := snapshotDirs(t, sn); len(got) != 0 {
			t.Fatalf("async=%v: directories left after Cleanup: %v", async, got)
		}
	}
}

func TestRootMustBeAbsolute(t *testing.T) {
	if _, err := NewSnapshotter(context.Background(), "relative/root"); err == nil {
		t.Fatal("a relative root was accepted")
	}
}

// A new root has no snapshots: cleanup finds nothing to do and reports no error; stray
// directories (a crash between Remove and Cleanup) are removed.
func TestCleanupOnNewRoot(t *testing.T) {
	ctx, sn := newTestSnapshotter(t)
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatalf("cleanup of a new root: %v", err)
	}
	stray := filepath.Join(sn.snapshotsDir(), "42")
	if err := os.MkdirAll(filepath.Join(stray, "fs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Fatalf("stray directory survived cleanup: %v", err)
	}
}

// A metadata store that another process holds (a second daemon on the same root) fails
// NewSnapshotter with an error that says so, instead of waiting forever on the file lock; once
// it is let go the snapshotter opens and its snapshots are there.
func TestMetadataStoreHeldElsewhereFailsOpen(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	root := t.TempDir()
	sn, err := NewSnapshotter(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "kept", ""); err != nil {
		t.Fatal(err)
	}
	// The first holder keeps the store's lock while a second opens the same root.
	done := make(chan error, 1)
	go func() {
		second, err := NewSnapshotter(ctx, root, WithMetadataLockTimeout(200*time.Millisecond))
		if err == nil {
			second.Close()
		}
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("NewSnapshotter waits forever on a metadata store another process holds")
	}
	if err == nil || !errors.Is(err, bolterrors.ErrTimeout) || !strings.Contains(err.Error(), "another process holds it") {
		t.Fatalf("want an error saying another process holds the metadata store, got %v", err)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := NewSnapshotter(ctx, root)
	if err != nil {
		t.Fatalf("reopening after the holder let go: %v", err)
	}
	defer again.Close()
	if _, err := again.Stat(ctx, "kept"); err != nil {
		t.Fatalf("snapshot lost: %v", err)
	}
}
