package artifact

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"time"
)

// CheckHeaders checks that toc describes the tar stream r entry by entry: for every tar
// header, in order, the TOC entry the writer made from it has the same name, type, mode,
// owner, size, link target, device numbers, extended attributes and modification time. The
// node serves metadata from the TOC, so a TOC that differs from the tar serves another tree
// than the bytes the diff_id verifies. It reads r to the tar's end-of-archive marker.
func CheckHeaders(toc *JTOC, r io.Reader) error {
	tr := tar.NewReader(r)
	i := 0
	next := func() *TOCEntry {
		for ; i < len(toc.Entries); i++ {
			if e := toc.Entries[i]; e != nil && e.Type != "chunk" {
				i++
				return e
			}
		}
		return nil
	}
	for n := 0; ; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if e := next(); e != nil {
				return fmt.Errorf("the TOC lists %q, which the tar does not hold", e.RawName())
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("tar header %d: %w", n, err)
		}
		e := next()
		if e == nil {
			return fmt.Errorf("the tar holds %q, which the TOC does not list", h.Name)
		}
		if err := compareHeader(e, h); err != nil {
			return fmt.Errorf("%q: %w", h.Name, err)
		}
	}
}

var tocTypes = map[byte]string{
	tar.TypeReg: "reg", tar.TypeLink: "hardlink", tar.TypeSymlink: "symlink", tar.TypeDir: "dir",
	tar.TypeChar: "char", tar.TypeBlock: "block", tar.TypeFifo: "fifo",
}

func compareHeader(e *TOCEntry, h *tar.Header) error {
	mismatch := func(what string, toc, tarv any) error {
		return fmt.Errorf("the TOC says %s %v, the tar header %v", what, toc, tarv)
	}
	if e.RawName() != h.Name {
		return mismatch("name", fmt.Sprintf("%q", e.RawName()), fmt.Sprintf("%q", h.Name))
	}
	if want := tocTypes[h.Typeflag]; e.Type != want {
		return mismatch("type", e.Type, want)
	}
	if e.Mode != h.Mode {
		return mismatch("mode", fmt.Sprintf("%o", e.Mode), fmt.Sprintf("%o", h.Mode))
	}
	if e.UID != h.Uid || e.GID != h.Gid {
		return mismatch("owner", fmt.Sprintf("%d:%d", e.UID, e.GID), fmt.Sprintf("%d:%d", h.Uid, h.Gid))
	}
	if h.Typeflag == tar.TypeReg && e.Size != h.Size {
		return mismatch("size", e.Size, h.Size)
	}
	if (h.Typeflag == tar.TypeLink || h.Typeflag == tar.TypeSymlink) && e.RawLinkName() != h.Linkname {
		return mismatch("link target", fmt.Sprintf("%q", e.RawLinkName()), fmt.Sprintf("%q", h.Linkname))
	}
	if (h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock) && (int64(e.DevMajor) != h.Devmajor || int64(e.DevMinor) != h.Devminor) {
		return mismatch("device", fmt.Sprintf("%d:%d", e.DevMajor, e.DevMinor), fmt.Sprintf("%d:%d", h.Devmajor, h.Devminor))
	}
	xattrs := map[string][]byte{}
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			xattrs[name] = []byte(v)
		}
	}
	if len(e.Xattrs) != len(xattrs) || !maps.EqualFunc(e.Xattrs, xattrs, bytes.Equal) {
		return mismatch("extended attributes", e.Xattrs, xattrs)
	}
	seconds, nanos := "", ""
	if !h.ModTime.IsZero() && h.ModTime.Unix() != 0 {
		seconds = h.ModTime.UTC().Round(time.Second).Format(time.RFC3339)
	}
	if h.ModTime.Nanosecond() != 0 {
		nanos = h.ModTime.UTC().Format(time.RFC3339Nano)
	}
	if e.ModTime3339 != seconds || e.RillModTime != nanos {
		return mismatch("modification time", e.ModTime3339+" "+e.RillModTime, h.ModTime.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// ReadTOC reads the TOC of the eStargz blob r of size bytes: the footer, then the TOC
// member it points at. It returns the TOC, its offset and its JSON.
func ReadTOC(r io.ReaderAt, size int64, maxBytes int64) (*JTOC, int64, []byte, error) {
	if size < FooterSize {
		return nil, 0, nil, fmt.Errorf("blob of %d bytes is smaller than an eStargz footer", size)
	}
	footer := make([]byte, FooterSize)
	if _, err := r.ReadAt(footer, size-FooterSize); err != nil {
		return nil, 0, nil, fmt.Errorf("read footer: %w", err)
	}
	off, err := ParseFooter(footer)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("footer: %w", err)
	}
	if off <= 0 || off >= size-FooterSize || size-FooterSize-off > maxBytes {
		return nil, 0, nil, fmt.Errorf("TOC at %d of a %d-byte blob", off, size)
	}
	zr, err := gzip.NewReader(io.NewSectionReader(r, off, size-FooterSize-off))
	if err != nil {
		return nil, 0, nil, fmt.Errorf("TOC gzip: %w", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("TOC tar: %w", err)
	}
	if h.Size > maxBytes {
		return nil, 0, nil, fmt.Errorf("TOC JSON of %d bytes is larger than %d", h.Size, maxBytes)
	}
	tocJSON, err := io.ReadAll(tr)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("TOC tar: %w", err)
	}
	toc, err := DecodeTOC(tocJSON)
	if err != nil {
		return nil, 0, nil, err
	}
	return toc, off, tocJSON, nil
}
