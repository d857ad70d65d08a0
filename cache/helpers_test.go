package cache

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// quiet is a logger that discards everything.
func quiet() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// openStore opens a store in dir and closes it at the end of the test.
func openStore(t testing.TB, dir string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), dir, append([]Option{WithLogger(quiet())}, opts...)...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fakeClock makes the store's LRU order that of the test's operations.
func fakeClock(s *Store) {
	var n atomic.Int64
	s.now = func() int64 { return n.Add(1) }
}

// layerDigest returns a distinct valid digest per name.
func layerDigest(name string) digest.Digest { return digest.FromString(name) }

func acquire(t testing.TB, s *Store, d digest.Digest) *Layer {
	t.Helper()
	l, err := s.Layer(context.Background(), d)
	if err != nil {
		t.Fatalf("Layer(%s): %v", d, err)
	}
	t.Cleanup(l.Release)
	return l
}

func openFile(t testing.TB, l *Layer, key string, size int64) *File {
	t.Helper()
	f, err := l.File(key, size)
	if err != nil {
		t.Fatalf("File(%q, %d): %v", key, size, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// content returns the bytes [off, off+n) of the test file named seed: what a fetch from the
// registry would return for them.
func content(seed string, off, n int64) []byte {
	h := uint32(2166136261)
	for i := 0; i < len(seed); i++ {
		h = (h ^ uint32(seed[i])) * 16777619
	}
	b := make([]byte, n)
	for i := range b {
		x := uint32(off+int64(i))*2654435761 ^ h
		b[i] = byte(x>>24) ^ byte(x>>7)
	}
	return b
}

func mustWrite(t testing.TB, f *File, seed string, off, n int64) {
	t.Helper()
	if err := f.WriteAt(content(seed, off, n), off); err != nil {
		t.Fatalf("WriteAt(%d, %d): %v", off, n, err)
	}
}

// mustRead asserts that [off, off+n) reads back as the seed's content.
func mustRead(t testing.TB, f *File, seed string, off, n int64) {
	t.Helper()
	p := make([]byte, n)
	got, err := f.ReadAt(p, off)
	if err != nil && !(errors.Is(err, io.EOF) && off+n >= f.Size()) {
		t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
	}
	want := content(seed, off, n)[:got]
	if int64(got) != min(n, f.Size()-off) || string(p[:got]) != string(want) {
		t.Fatalf("ReadAt(%d, %d): got %d bytes, wrong content or length", off, n, got)
	}
}

// mustMiss asserts that reading [off, off+n) is a miss.
func mustMiss(t testing.TB, f *File, off, n int64) {
	t.Helper()
	if got, err := f.ReadAt(make([]byte, n), off); !errors.Is(err, ErrNotCached) || got != 0 {
		t.Fatalf("ReadAt(%d, %d) = %d, %v; want 0, ErrNotCached", off, n, got, err)
	}
}

// diskBytes returns the bytes the files under dir occupy on disk (st_blocks).
func diskBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			n += info.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// journalBytes returns the bytes the journals under dir occupy on disk.
func journalBytes(t testing.TB, dir string) int64 {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(dir, "layers", "*", "*", "journal"))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, m := range matches {
		info, err := os.Stat(m)
		if err != nil {
			t.Fatal(err)
		}
		n += info.Sys().(*syscall.Stat_t).Blocks * 512
	}
	return n
}
