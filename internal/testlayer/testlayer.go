package testlayer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"math/rand/v2"
	"strings"
	"time"
)

// Entry is one member of a layer.
type Entry struct {
	Header tar.Header
	Body   []byte
}

// ModTime is the modification time of every generated entry (RootfsQuirks adds others).
var ModTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// RandomBytes returns n deterministic pseudo-random bytes for seed.
func RandomBytes(seed uint64, n int) []byte {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// Reg is a regular file.
func Reg(name string, body []byte, mode int64) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(body)), Mode: mode, Uid: 1000, Gid: 1000, ModTime: ModTime, Format: tar.FormatPAX}, Body: body}
}

// Dir is a directory.
func Dir(name string, mode int64) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: ModTime, Format: tar.FormatPAX}}
}

// Symlink is a symbolic link.
func Symlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: ModTime, Format: tar.FormatPAX}}
}

// Hardlink is a hard link to an earlier regular file.
func Hardlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644, Uid: 1000, Gid: 1000, ModTime: ModTime, Format: tar.FormatPAX}}
}

// EveryKind is a layer with every kind of entry, sized so that files span several chunks of
// 64 KiB.
func EveryKind() []Entry {
	xattrFile := Reg("etc/with-xattrs", []byte("xattrs\n"), 0o644)
	xattrFile.Header.PAXRecords = map[string]string{"SCHILY.xattr.user.rill": "streams", "SCHILY.xattr.user.empty-ish": "x"}
	setgidDir := Dir("srv/shared/", 0o2775)
	setgidDir.Header.Uid, setgidDir.Header.Gid = 33, 33
	return []Entry{
		Dir("etc/", 0o755),
		Reg("etc/hostname", []byte("rill\n"), 0o644),
		Reg("etc/empty", nil, 0o600),
		Reg("etc/unreadable", []byte("secret\n"), 0o000),
		xattrFile,
		Reg("usr/bin/no-parent-dirs", RandomBytes(1, 3000), 0o755), // usr/ and usr/bin/ are implied
		Reg("usr/bin/setuid", []byte("#!/bin/sh\n"), 0o4755),
		Dir("tmp/", 0o1777),
		setgidDir,
		Reg("big/exactly-one-chunk", RandomBytes(2, 64<<10), 0o644),
		Reg("big/three-and-a-half-chunks", RandomBytes(3, 64<<10*7/2), 0o644),
		Reg("big/compressible", bytes.Repeat([]byte("rill "), 50_000), 0o644),
		Symlink("etc/link", "hostname"),
		Symlink("etc/absolute-link", "/etc/hostname"),
		Symlink("etc/dangling", "../nowhere"),
		Hardlink("etc/hardlink", "etc/hostname"),
		Hardlink("big/hardlink-to-big", "big/three-and-a-half-chunks"),
		{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Devmajor: 1, Devminor: 3, Mode: 0o666, ModTime: ModTime, Format: tar.FormatPAX}},
		{Header: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop0", Devmajor: 7, Devminor: 0, Mode: 0o660, ModTime: ModTime, Format: tar.FormatPAX}},
		{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600, ModTime: ModTime, Format: tar.FormatPAX}},
		Dir("var/", 0o755),
		Reg("var/.wh.deleted", nil, 0o600),
		Dir("opaque/", 0o755),
		Reg("opaque/.wh..wh..opq", nil, 0o600),
		Reg("opaque/kept", []byte("only this\n"), 0o644),
		Reg("ünïcødé/日本語/файл", []byte("unicode\n"), 0o644),
		Reg(strings.Repeat("long-directory-name/", 8)+strings.Repeat("n", 200), []byte("long\n"), 0o644),
	}
}

// RootfsQuirks is a layer with what real layers hold and containerd's extraction settles in
// its own way: the layer's own "./" entry (ignored), paths listed twice (the last entry wins: a
// file replaced, a file replaced by a directory and back, a directory listed again merging, a
// hardlinked file replaced), names and link targets that are not UTF-8, and modification
// times with nanoseconds, rounding up, and before 1970 (the epoch, in an extraction).
func RootfsQuirks() []Entry {
	at := func(e Entry, t time.Time) Entry {
		e.Header.ModTime = t
		return e
	}
	root := Dir("./", 0o700)
	root.Header.Uid, root.Header.Gid = 1000, 1000
	dirAgain := Dir("dup/dir-twice/", 0o750)
	dirAgain.Header.PAXRecords = map[string]string{"SCHILY.xattr.user.second": "listing"}
	dirAgain.Header.Uid = 7
	second := Reg("dup/twice.txt", []byte("second, and last\n"), 0o600)
	second.Header.Uid = 33
	return []Entry{
		root,
		Dir("dup/", 0o755),
		Reg("dup/twice.txt", []byte("first\n"), 0o644),
		second,
		Reg("dup/file-then-dir", []byte("a file first\n"), 0o644),
		Dir("dup/file-then-dir/", 0o750),
		Reg("dup/file-then-dir/inner", []byte("inside\n"), 0o644),
		Dir("dup/dir-then-file/", 0o755),
		Reg("dup/dir-then-file/gone", []byte("removed with its directory\n"), 0o644),
		Reg("dup/dir-then-file", []byte("a file last\n"), 0o644),
		Dir("dup/dir-twice/", 0o700),
		Reg("dup/dir-twice/kept", []byte("kept\n"), 0o644),
		dirAgain,
		Reg("dup/linked", []byte("old content\n"), 0o644),
		Hardlink("dup/old-link", "dup/linked"),
		Reg("dup/linked", []byte("new content\n"), 0o644),
		Hardlink("dup/new-link", "dup/linked"),
		Reg("dup/replaced-by-link", []byte("gone\n"), 0o644),
		Hardlink("dup/replaced-by-link", "dup/linked"),
		Reg("names/latin1-caf\xe9", []byte("latin-1\n"), 0o644),
		Reg("names/\xff\xfe-not-utf8", []byte("bytes\n"), 0o644),
		Symlink("names/link-to-latin1", "latin1-caf\xe9"),
		Hardlink("names/hardlink-caf\xe9", "names/latin1-caf\xe9"),
		at(Reg("times/nanoseconds", []byte("n\n"), 0o644), time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)),
		at(Reg("times/rounds-up", []byte("r\n"), 0o644), time.Date(2024, 5, 6, 7, 8, 9, 600_000_000, time.UTC)),
		at(Reg("times/before-1970", []byte("p\n"), 0o644), time.Date(1960, 1, 2, 3, 4, 5, 0, time.UTC)),
		at(Reg("times/just-after-the-epoch", []byte("e\n"), 0o644), time.Unix(0, 500_000_000)),
		at(Dir("times/", 0o755), time.Date(2023, 1, 1, 0, 0, 0, 1, time.UTC)),
	}
}

// Tar writes entries as a tar stream, padded with zeros to a multiple of padTo bytes (as tar
// does to fill records) when padTo > 0.
func Tar(entries []Entry, padTo int) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if err := tw.WriteHeader(&h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.Body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if padTo > 0 && buf.Len()%padTo != 0 {
		buf.Write(make([]byte, padTo-buf.Len()%padTo))
	}
	return buf.Bytes(), nil
}

// Gzip compresses b.
func Gzip(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}
