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

// ModTime is the modification time of every generated entry (whole seconds: the eStargz TOC
// keeps seconds only).
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
