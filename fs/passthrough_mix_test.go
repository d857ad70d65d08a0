package fs

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/rillstream/rill/internal/testlayer"
)

// A file that becomes complete while a process has it open (a shared library one process has
// loaded, say) opens again without error: the kernel refuses to mix passthrough and cached
// opens of an inode (EIO), so rill asks for passthrough only when no cached open is left.
// (The test reads through an open file rather than a mapping: a FUSE server must not fault in
// its own mappings.)
func TestOpenWhileOpenAndComplete(t *testing.T) {
	body := testlayer.RandomBytes(43, 300<<10)
	m := mountWithCache(t, []testlayer.Entry{testlayer.Reg("libc.so", body, 0o755)}, &switchableBlob{}, NewMetrics())
	p := filepath.Join(m.mountpoint, "libc.so")
	first, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	got, err := io.ReadAll(first) // the whole file: now complete in the cache
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("first read: %v", err)
	}
	second, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(second, body) {
		t.Fatalf("opening a complete file while it is open: %v", err)
	}
	first.Close()
	// With no cached open left, the next open is passed through.
	third, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(third, body) {
		t.Fatalf("open after the others closed: %v", err)
	}
}
