package fs

import (
	"crypto/rand"
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

// The recording says how much of each file was read: all of a file read whole, a small part
// of a big file read in one place.
func TestRecordsHowMuchOfEachFileIsRead(t *testing.T) {
	requireRoot(t)
	big := make([]byte, 8<<20)
	rand.Read(big) // incompressible: the neighbours of a miss do not complete it
	entries := []testlayer.Entry{
		testlayer.Reg("small", []byte("small file"), 0o644),
		testlayer.Reg("big", big, 0o644),
	}
	m := mountWithCacheOpts(t, entries, &switchableBlob{}, MountOptions{RecordWindow: time.Minute})
	if _, err := os.ReadFile(filepath.Join(m.mountpoint, "small")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(m.mountpoint, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 4096), 4<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, _ := m.Recorded()
	if len(got) != 2 {
		t.Fatalf("recorded %+v", got)
	}
	if a := got[0]; a.Path != "/small" || a.Size != 10 || a.Read != 10 {
		t.Errorf("the small file read whole: %+v", a)
	}
	// The kernel reads ahead, so more than the 4 KiB asked for, but far from the whole file.
	if a := got[1]; a.Path != "/big" || a.Size != int64(len(big)) || a.Unmetered || a.Read < 4096 || a.Read > int64(len(big))/4 {
		t.Errorf("the big file read in one place: %+v", a)
	}
}
