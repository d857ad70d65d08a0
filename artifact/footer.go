package artifact

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// FooterSize is the size of an eStargz blob's footer, its last bytes.
const FooterSize = estargz.FooterSize

// footerMagic ends the subfield of an eStargz footer's gzip extra field.
const footerMagic = "STARGZ"

// ParseFooter returns the TOC offset an eStargz footer records: an empty gzip member whose
// header's extra field is one subfield, 'S' 'G', of 22 bytes: the offset in 16 hex digits,
// then "STARGZ". It does what estargz.GzipDecompressor.ParseFooter does, which panics on an
// extra field shorter than its subfield length claims (found by fs's FuzzLoadTOC): every
// blob from a registry goes through this one first.
func ParseFooter(p []byte) (int64, error) {
	if len(p) != FooterSize {
		return 0, fmt.Errorf("%d bytes, not %d", len(p), FooterSize)
	}
	zr, err := gzip.NewReader(bytes.NewReader(p))
	if err != nil {
		return 0, fmt.Errorf("gzip header: %w", err)
	}
	defer zr.Close()
	const subfieldLen = 16 + len(footerMagic)
	extra := zr.Extra
	if len(extra) != 4+subfieldLen || extra[0] != 'S' || extra[1] != 'G' || int(binary.LittleEndian.Uint16(extra[2:4])) != subfieldLen || string(extra[4+16:]) != footerMagic {
		return 0, fmt.Errorf("gzip extra field %q is not an eStargz footer's", extra)
	}
	off, err := strconv.ParseInt(string(extra[4:4+16]), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("TOC offset %q: %w", extra[4:4+16], err)
	}
	return off, nil
}

// TOCOffsetHint returns the TOC offset a layer's annotations record (AnnotationTOCOffset), or 0
// when they record none or one that cannot be right for a blob of blobSize bytes: a TOC
// member of at least a byte before the footer.
func TOCOffsetHint(annotations map[string]string, blobSize int64) int64 {
	v, ok := annotations[AnnotationTOCOffset]
	if !ok {
		return 0
	}
	off, err := strconv.ParseInt(v, 10, 64)
	if err != nil || off <= 0 || off >= blobSize-FooterSize {
		return 0
	}
	return off
}
