package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/rillstream/rill/internal/testlayer"
)

// A file that becomes complete while a process has it open (or mapped, like a shared library
// another process loads) opens again without error: the kernel refuses to mix passthrough and
// cached opens of an inode, so rill does not ask for passthrough then.
func TestOpenWhileMappedAndComplete(t *testing.T) {
	body := testlayer.RandomBytes(43, 300<<10)
	m := mountWithCache(t, []testlayer.Entry{testlayer.Reg("libc.so", body, 0o755)}, &switchableBlob{}, NewMetrics())
	p := filepath.Join(m.mountpoint, "libc.so")
	first, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	mapped, err := syscall.Mmap(int(first.Fd()), 0, len(body), syscall.PROT_READ, syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(mapped)
	if !bytes.Equal(mapped, body) { // reads the whole file: now complete in the cache
		t.Fatal("mapped content differs")
	}
	second, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(second, body) {
		t.Fatalf("opening a complete file while it is mapped: %v", err)
	}
}
