package fs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rillstream/rill/internal/testlayer"
)

// Files first opened during the window after the mount are recorded once each, in order;
// later opens are not.
func TestRecordsFirstOpensDuringTheWindow(t *testing.T) {
	requireRoot(t)
	entries := []testlayer.Entry{
		testlayer.Reg("bin/app", []byte("app"), 0o755),
		testlayer.Reg("etc/conf", []byte("conf"), 0o644),
		testlayer.Reg("lib/a.so", []byte("lib"), 0o644),
		testlayer.Reg("late", []byte("late"), 0o644),
	}
	blob := &switchableBlob{}
	m := mountWithCacheOpts(t, entries, blob, MountOptions{RecordWindow: time.Second})
	for _, p := range []string{"etc/conf", "bin/app", "etc/conf", "lib/a.so"} {
		if _, err := os.ReadFile(filepath.Join(m.mountpoint, p)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(1100 * time.Millisecond)
	if _, err := os.ReadFile(filepath.Join(m.mountpoint, "late")); err != nil {
		t.Fatal(err)
	}
	got, over := m.Recorded()
	var paths []string
	for _, a := range got {
		paths = append(paths, a.Path)
	}
	if !over || fmt.Sprint(paths) != "[/etc/conf /bin/app /lib/a.so]" {
		t.Fatalf("recorded %v (window over: %v), want [/etc/conf /bin/app /lib/a.so]", paths, over)
	}
}
