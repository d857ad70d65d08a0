package remote

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"sort"
	"strconv"
	"strings"
)

// Range is a byte range of a blob: Length bytes from Offset.
type Range struct {
	Offset int64
	Length int64
}

func (r Range) end() int64 { return r.Offset + r.Length }

func (r Range) String() string { return fmt.Sprintf("%d-%d", r.Offset, r.end()-1) }

// contentRange is a parsed Content-Range header, "bytes first-last/size"; size is -1 for "*".
type contentRange struct {
	first, last, size int64
}

var errBadContentRange = errors.New("malformed Content-Range")

// parseContentRange parses a Content-Range header of a satisfied byte range, strictly.
func parseContentRange(s string) (contentRange, error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return contentRange{}, fmt.Errorf("%w: %q", errBadContentRange, clip(s))
	}
	span, size, ok := strings.Cut(rest, "/")
	if !ok {
		return contentRange{}, fmt.Errorf("%w: %q", errBadContentRange, clip(s))
	}
	a, b, ok := strings.Cut(span, "-")
	if !ok {
		return contentRange{}, fmt.Errorf("%w: %q", errBadContentRange, clip(s))
	}
	first, err1 := parseDigits(a)
	last, err2 := parseDigits(b)
	if err1 != nil || err2 != nil || last < first {
		return contentRange{}, fmt.Errorf("%w: %q", errBadContentRange, clip(s))
	}
	cr := contentRange{first: first, last: last, size: -1}
	if size != "*" {
		n, err := parseDigits(size)
		if err != nil || last >= n {
			return contentRange{}, fmt.Errorf("%w: %q", errBadContentRange, clip(s))
		}
		cr.size = n
	}
	return cr, nil
}

func (c contentRange) String() string {
	size := "*"
	if c.size >= 0 {
		size = strconv.FormatInt(c.size, 10)
	}
	return fmt.Sprintf("bytes %d-%d/%s", c.first, c.last, size)
}

// parseDigits parses a non-negative decimal without sign, spaces or overflow.
func parseDigits(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, errBadContentRange
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errBadContentRange
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// rangeHeader is the Range header value asking for spans, which must be non-empty.
func rangeHeader(spans []Range) string {
	var b strings.Builder
	b.WriteString("bytes=")
	for i, s := range spans {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d-%d", s.Offset, s.end()-1)
	}
	return b.String()
}

// part is a range of a blob as a response delivered it.
type part struct {
	offset int64
	data   []byte
}

// readPart reads the body of a single-range 206 response whose Content-Range is cr.
func readPart(body io.Reader, cr contentRange, limit int64) (part, error) {
	n := cr.last - cr.first + 1
	if n > limit {
		return part{}, fmt.Errorf("range of %d bytes is more than the %d asked for", n, limit)
	}
	data, err := readExactly(body, n)
	if err != nil {
		return part{}, err
	}
	return part{offset: cr.first, data: data}, nil
}

// readChunk is the most readExactly allocates before the bytes arrive: a length a server
// claims is only believed as far as the body backs it.
const readChunk = 1 << 20

// readExactly reads n bytes and makes sure nothing follows them. Its buffer grows with the
// bytes received (doubling, from at most readChunk), so a false length costs no memory.
func readExactly(r io.Reader, n int64) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("negative body length %d", n)
	}
	data := make([]byte, min(n, readChunk))
	_, err := io.ReadFull(r, data)
	for err == nil && int64(len(data)) < n {
		have := len(data)
		data = append(data, make([]byte, min(n-int64(have), int64(have)))...)
		_, err = io.ReadFull(r, data[have:])
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("body truncated, expected %d bytes: %w", n, err)
	}
	var one [1]byte
	m, err := io.ReadFull(r, one[:])
	if m != 0 {
		return nil, fmt.Errorf("body longer than its Content-Range (%d bytes)", n)
	}
	if !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("body after %d bytes: %w", n, err)
	}
	return data, nil
}

// parseMultipart reads a multipart/byteranges body. Every part must carry a valid
// Content-Range of a blob of size bytes and exactly as many bytes; all parts together may
// hold at most limit bytes. contentType is the response's Content-Type header.
func parseMultipart(body io.Reader, contentType string, size, limit int64) ([]part, error) {
	if size < 0 || limit < 0 {
		return nil, fmt.Errorf("multipart body of a blob of %d bytes, limit %d: %w", size, limit, errInvalidArgument)
	}
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/byteranges" || params["boundary"] == "" {
		return nil, fmt.Errorf("not a multipart/byteranges body: %q", clip(contentType))
	}
	mr := multipart.NewReader(body, params["boundary"])
	var parts []part
	var total int64
	for {
		p, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("multipart body: %w", err)
		}
		cr, err := parseContentRange(textproto.MIMEHeader(p.Header).Get("Content-Range"))
		if err != nil {
			return nil, fmt.Errorf("multipart part: %w", err)
		}
		if cr.size != size {
			return nil, fmt.Errorf("multipart part %s is of a blob of %d bytes, not %d", cr, cr.size, size)
		}
		n := cr.last - cr.first + 1
		if n > limit-total {
			return nil, fmt.Errorf("multipart body holds more than the %d bytes asked for", limit)
		}
		total += n
		data, err := readExactly(p, n)
		if err != nil {
			return nil, fmt.Errorf("multipart part %s: %w", cr, err)
		}
		parts = append(parts, part{offset: cr.first, data: data})
	}
	if len(parts) == 0 {
		return nil, errors.New("multipart body without parts")
	}
	return parts, nil
}

// coalesce sorts ranges and merges those that overlap or lie at most gap bytes apart into
// spans. Empty ranges are dropped.
func coalesce(ranges []Range, gap int64) []Range {
	rs := make([]Range, 0, len(ranges))
	for _, r := range ranges {
		if r.Length > 0 {
			rs = append(rs, r)
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Offset < rs[j].Offset })
	var spans []Range
	for _, r := range rs {
		if n := len(spans); n > 0 && r.Offset <= spans[n-1].end()+gap {
			if r.end() > spans[n-1].end() {
				spans[n-1].Length = r.end() - spans[n-1].Offset
			}
			continue
		}
		spans = append(spans, r)
	}
	return spans
}
