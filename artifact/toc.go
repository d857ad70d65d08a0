package artifact

import (
	"archive/tar"

	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// JTOC is an eStargz TOC as rill writes and reads it: estargz's, with rill's extension fields
// in its entries. Readers that do not know them (the estargz library, stargz-snapshotter)
// ignore them and see an ordinary TOC.
type JTOC struct {
	Version int         `json:"version"`
	Entries []*TOCEntry `json:"entries"`
}

// TOCEntry is an eStargz TOC entry with rill's extension fields (docs/formats.md, "TOC
// extension fields"). JSON strings are UTF-8, so a name that is not loses its bytes in the
// estargz fields; the extension keeps them.
type TOCEntry struct {
	estargz.TOCEntry
	// RillName is the entry's name as the tar header holds it, when that is not valid UTF-8
	// (encoded in base64 as JSON encodes bytes). It replaces Name.
	RillName []byte `json:"rillName,omitempty"`
	// RillLinkName is the link target, likewise.
	RillLinkName []byte `json:"rillLinkName,omitempty"`
	// RillModTime is the modification time to the nanosecond (RFC 3339), when it is not a
	// whole second: estargz's modtime keeps seconds only, rounded.
	RillModTime string `json:"rillModTime,omitempty"`
}

// RawName is the entry's name as its tar header holds it.
func (e *TOCEntry) RawName() string {
	if e.RillName != nil {
		return string(e.RillName)
	}
	return e.Name
}

// RawLinkName is the entry's link target as its tar header holds it.
func (e *TOCEntry) RawLinkName() string {
	if e.RillLinkName != nil {
		return string(e.RillLinkName)
	}
	return e.LinkName
}

// ModTime is the entry's modification time as an extraction sets it: containerd's
// archive.Apply sets times before 1970, and after what a time.Time in nanoseconds holds, to
// the epoch; a TOC that records none (estargz leaves the epoch out) means the epoch.
func (e *TOCEntry) ModTime() time.Time {
	var t time.Time
	if e.RillModTime != "" {
		if p, err := time.Parse(time.RFC3339Nano, e.RillModTime); err == nil {
			t = p
		}
	}
	if t.IsZero() && e.ModTime3339 != "" {
		if p, err := time.Parse(time.RFC3339, e.ModTime3339); err == nil {
			t = p
		}
	}
	return BoundTime(t)
}

var maxTime = time.Unix(0, 1<<63-1)

// BoundTime is what containerd's extraction makes of a time (archive's boundTime): times
// before the epoch or past 2262 become the epoch.
func BoundTime(t time.Time) time.Time {
	if t.Before(time.Unix(0, 0)) || t.After(maxTime) {
		return time.Unix(0, 0)
	}
	return t
}

// Extend adds rill's extension fields to the entries estargz's writer made from headers:
// headers[i] is the tar header of the i-th entry that is not a chunk (the writer makes one
// entry per header, in order). It refuses what no TOC entry could carry.
func Extend(toc *estargz.JTOC, headers []*tar.Header) (*JTOC, error) {
	out := &JTOC{Version: toc.Version, Entries: make([]*TOCEntry, len(toc.Entries))}
	i := -1
	var h *tar.Header
	for k, e := range toc.Entries {
		x := &TOCEntry{TOCEntry: *e}
		out.Entries[k] = x
		if e.Type != "chunk" {
			i++
			if i >= len(headers) {
				return nil, fmt.Errorf("the TOC has more entries than the tar has headers (%d)", len(headers))
			}
			h = headers[i]
			if h.Name != e.Name {
				return nil, fmt.Errorf("TOC entry %d is %q, its tar header %q", k, e.Name, h.Name)
			}
		}
		if h == nil {
			return nil, fmt.Errorf("TOC entry %d is a chunk before any file", k)
		}
		if !utf8.ValidString(h.Name) {
			x.RillName = []byte(h.Name)
		}
		if e.Type == "chunk" {
			continue
		}
		for name := range e.Xattrs {
			if !utf8.ValidString(name) {
				return nil, fmt.Errorf("%q: the name of extended attribute %q is not UTF-8, which a TOC cannot hold", h.Name, name)
			}
		}
		if !utf8.ValidString(h.Linkname) {
			x.RillLinkName = []byte(h.Linkname)
		}
		if h.ModTime.Nanosecond() != 0 {
			x.RillModTime = h.ModTime.UTC().Format(time.RFC3339Nano)
		}
	}
	if i+1 != len(headers) {
		return nil, fmt.Errorf("the tar has %d headers, the TOC %d entries", len(headers), i+1)
	}
	return out, nil
}

// DecodeTOC decodes TOC JSON, as encoding/json decodes it (decodeTOCFast, or encoding/json
// itself for what that one leaves to it).
func DecodeTOC(tocJSON []byte) (*JTOC, error) {
	if toc, ok := decodeTOCFast(tocJSON); ok {
		return toc, nil
	}
	var toc JTOC
	if err := json.Unmarshal(tocJSON, &toc); err != nil {
		return nil, fmt.Errorf("decode TOC JSON: %w", err)
	}
	return &toc, nil
}

// WriteTOCAndFooter writes toc as an eStargz TOC member (a gzip member holding a tar of one
// file, stargz.index.json) at offset off of the blob, then the footer pointing at it, as
// estargz's GzipCompressor does; it returns the TOC JSON (its digest is the TOC digest).
// Uncompressed bytes also go to diffHash, when set.
func WriteTOCAndFooter(w io.Writer, off int64, toc *JTOC, level int, diffHash io.Writer) ([]byte, error) {
	tocJSON, err := json.MarshalIndent(toc, "", "\t")
	if err != nil {
		return nil, err
	}
	if err := writeTOC(w, off, tocJSON, level, diffHash); err != nil {
		return nil, err
	}
	return tocJSON, nil
}

func writeTOC(w io.Writer, off int64, tocJSON []byte, level int, diffHash io.Writer) error {
	gz, err := gzip.NewWriterLevel(w, level)
	if err != nil {
		return err
	}
	gw := io.Writer(gz)
	if diffHash != nil {
		gw = io.MultiWriter(gz, diffHash)
	}
	tw := tar.NewWriter(gw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Size: int64(len(tocJSON))}); err != nil {
		return err
	}
	if _, err := tw.Write(tocJSON); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	_, err = w.Write(FooterBytes(off))
	return err
}

// FooterBytes is the eStargz footer recording TOC offset off (ParseFooter reads it).
func FooterBytes(off int64) []byte {
	sub := fmt.Sprintf("%016x%s", off, footerMagic)
	extra := make([]byte, 4, 4+len(sub))
	extra[0], extra[1] = 'S', 'G'
	binary.LittleEndian.PutUint16(extra[2:4], uint16(len(sub)))
	return estargz.CreateGzipFooter(append(extra, sub...))
}
