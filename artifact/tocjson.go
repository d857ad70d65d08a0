package artifact

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"unicode/utf8"
)

// decodeTOCFast decodes TOC JSON into a JTOC as encoding/json does, several times faster: a
// node decodes a TOC of tens of thousands of entries (megabytes of JSON) before a layer
// mounts, and encoding/json's reflection spent most of that CPU time. It handles the JSON
// a TOC writer produces; on anything else — a syntax error, a type that does not match a
// field, a key listed twice or spelled in another case (which encoding/json folds), escapes
// in keys, deep nesting — it reports false and DecodeTOC leaves the input to encoding/json,
// whose result (or error) then is the answer. FuzzDecodeTOC checks that what it accepts
// decodes exactly as encoding/json decodes it.
func decodeTOCFast(data []byte) (*JTOC, bool) {
	p := tocParser{s: string(data)}
	toc, ok := p.toc()
	if !ok {
		return nil, false
	}
	p.space()
	if p.i != len(p.s) {
		return nil, false
	}
	return toc, true
}

// tocParser reads JSON from s at i. Strings without escapes are substrings of s (one copy of
// the input for all of them: the tree keeps copies of what it retains).
type tocParser struct {
	s    string
	i    int
	slab []TOCEntry
}

func (p *tocParser) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// next skips white space and returns the next byte, or 0 at the end.
func (p *tocParser) next() byte {
	p.space()
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

// consume skips white space and the byte c, or reports false.
func (p *tocParser) consume(c byte) bool {
	if p.next() != c {
		return false
	}
	p.i++
	return true
}

// null consumes a null literal if one is next.
func (p *tocParser) null() bool {
	if p.next() == 'n' && len(p.s)-p.i >= 4 && p.s[p.i:p.i+4] == "null" {
		p.i += 4
		return true
	}
	return false
}

// object reads an object's members, calling member after each key with the parser at its
// value; keys must be plain (no escapes), as encoding/json unescapes keys before matching
// them.
func (p *tocParser) object(member func(key string) bool) bool {
	if !p.consume('{') {
		return false
	}
	if p.consume('}') {
		return true
	}
	for {
		if p.next() != '"' {
			return false
		}
		key, ok := p.plainString()
		if !ok || !p.consume(':') || !member(key) {
			return false
		}
		switch p.next() {
		case ',':
			p.i++
		case '}':
			p.i++
			return true
		default:
			return false
		}
	}
}

// plainString reads a string without escapes, control characters or invalid UTF-8, which
// encoding/json would decode to the same bytes.
func (p *tocParser) plainString() (string, bool) {
	start := p.i + 1
	ascii := true
	for j := start; j < len(p.s); j++ {
		c := p.s[j]
		switch {
		case c == '"':
			s := p.s[start:j]
			if !ascii && !utf8.ValidString(s) {
				return "", false
			}
			p.i = j + 1
			return s, true
		case c == '\\' || c < 0x20:
			return "", false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", false
}

// str reads a string value: plain strings fast, others (escapes, invalid UTF-8, which
// encoding/json replaces) through encoding/json.
func (p *tocParser) str() (string, bool) {
	if p.next() != '"' {
		return "", false
	}
	start := p.i
	if s, ok := p.plainString(); ok {
		return s, true
	}
	end, ok := p.stringEnd(start)
	if !ok {
		return "", false
	}
	var s string
	if json.Unmarshal([]byte(p.s[start:end]), &s) != nil {
		return "", false
	}
	p.i = end
	return s, true
}

// stringEnd returns the offset just past the string starting at start, checking its escapes
// and characters as JSON's grammar has them.
func (p *tocParser) stringEnd(start int) (int, bool) {
	for j := start + 1; j < len(p.s); j++ {
		switch c := p.s[j]; {
		case c == '"':
			return j + 1, true
		case c < 0x20:
			return 0, false
		case c == '\\':
			j++
			if j >= len(p.s) {
				return 0, false
			}
			switch p.s[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(p.s) {
					return 0, false
				}
				for _, h := range []byte(p.s[j+1 : j+5]) {
					if !isHex(h) {
						return 0, false
					}
				}
				j += 4
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// int64 reads an integer as encoding/json decodes it into an int64 field; null leaves *v
// unchanged. Numbers with a fraction or exponent, and overflows, are errors there.
func (p *tocParser) int64(v *int64) bool {
	if p.null() {
		return true
	}
	p.space()
	neg := p.i < len(p.s) && p.s[p.i] == '-'
	if neg {
		p.i++
	}
	start := p.i
	var n uint64
	for p.i < len(p.s) && '0' <= p.s[p.i] && p.s[p.i] <= '9' {
		d := uint64(p.s[p.i] - '0')
		if n > (math.MaxUint64-d)/10 {
			return false
		}
		n = n*10 + d
		p.i++
	}
	digits := p.i - start
	if digits == 0 || digits > 1 && p.s[start] == '0' {
		return false
	}
	if p.i < len(p.s) {
		switch p.s[p.i] {
		case '.', 'e', 'E':
			return false
		}
	}
	switch {
	case !neg && n <= math.MaxInt64:
		*v = int64(n)
	case neg && n <= math.MaxInt64+1:
		*v = int64(-n) // -n wraps to MinInt64 for n = 2^63
	default:
		return false
	}
	return true
}

func (p *tocParser) int(v *int) bool {
	n := int64(*v)
	if !p.int64(&n) || int64(int(n)) != n {
		return false
	}
	*v = int(n)
	return true
}

// string reads a string field; null leaves *v unchanged.
func (p *tocParser) string(v *string) bool {
	if p.null() {
		return true
	}
	s, ok := p.str()
	*v = s
	return ok
}

// bytes reads a []byte field (base64, as encoding/json decodes it); null sets it to nil.
func (p *tocParser) bytes(v *[]byte) bool {
	if p.null() {
		*v = nil
		return true
	}
	s, ok := p.str()
	if !ok {
		return false
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(b, []byte(s))
	if err != nil {
		return false
	}
	*v = b[:n]
	return true
}

// skip reads any value, for keys the TOC types do not have.
func (p *tocParser) skip(depth int) bool {
	if depth > 100 {
		return false
	}
	switch c := p.next(); {
	case c == '"':
		end, ok := p.stringEnd(p.i)
		p.i = end
		return ok
	case c == '{':
		return p.object(func(string) bool { return p.skip(depth + 1) })
	case c == '[':
		p.i++
		if p.consume(']') {
			return true
		}
		for {
			if !p.skip(depth + 1) {
				return false
			}
			if p.consume(']') {
				return true
			}
			if !p.consume(',') {
				return false
			}
		}
	case c == '-' || '0' <= c && c <= '9':
		return p.number()
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if len(p.s)-p.i >= len(lit) && p.s[p.i:p.i+len(lit)] == lit {
				p.i += len(lit)
				return true
			}
		}
		return false
	}
}

// number reads a number as JSON's grammar has it.
func (p *tocParser) number() bool {
	digits := func() int {
		start := p.i
		for p.i < len(p.s) && '0' <= p.s[p.i] && p.s[p.i] <= '9' {
			p.i++
		}
		return p.i - start
	}
	if p.s[p.i] == '-' {
		p.i++
	}
	start := p.i
	if n := digits(); n == 0 || n > 1 && p.s[start] == '0' {
		return false
	}
	if p.i < len(p.s) && p.s[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return false
		}
	}
	if p.i < len(p.s) && (p.s[p.i] == 'e' || p.s[p.i] == 'E') {
		p.i++
		if p.i < len(p.s) && (p.s[p.i] == '+' || p.s[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}

// unknown reads the value of a key the type does not have: encoding/json ignores it, unless
// the key matches a field in another case (it folds case, and a few non-ASCII letters).
func (p *tocParser) unknown(key string, known []string) bool {
	for i := 0; i < len(key); i++ {
		if key[i] >= utf8.RuneSelf {
			return false
		}
	}
	for _, k := range known {
		if len(k) == len(key) && asciiEqualFold(k, key) {
			return false
		}
	}
	return p.skip(0)
}

func asciiEqualFold(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

var tocKeys = []string{"version", "entries"}

func (p *tocParser) toc() (*JTOC, bool) {
	toc := &JTOC{}
	var seen uint8
	ok := p.object(func(key string) bool {
		var bit uint8
		switch key {
		case "version":
			bit = 1
			if !p.int(&toc.Version) {
				return false
			}
		case "entries":
			bit = 2
			if !p.entries(toc) {
				return false
			}
		default:
			return p.unknown(key, tocKeys)
		}
		if seen&bit != 0 {
			return false // a key listed twice: encoding/json merges into what it decoded first
		}
		seen |= bit
		return true
	})
	return toc, ok
}

func (p *tocParser) entries(toc *JTOC) bool {
	if p.null() {
		toc.Entries = nil
		return true
	}
	if !p.consume('[') {
		return false
	}
	toc.Entries = make([]*TOCEntry, 0, len(p.s)/300+1)
	if p.consume(']') {
		return true
	}
	for {
		if p.null() {
			toc.Entries = append(toc.Entries, nil)
		} else {
			e := p.newEntry()
			if !p.entry(e) {
				return false
			}
			toc.Entries = append(toc.Entries, e)
		}
		if p.consume(']') {
			return true
		}
		if !p.consume(',') {
			return false
		}
	}
}

// newEntry allocates entries in slabs: tens of thousands of them, each as large as estargz's
// entry is.
func (p *tocParser) newEntry() *TOCEntry {
	if len(p.slab) == 0 {
		p.slab = make([]TOCEntry, 256)
	}
	e := &p.slab[0]
	p.slab = p.slab[1:]
	return e
}

var entryKeys = []string{"name", "type", "size", "modtime", "linkName", "mode", "uid", "gid", "userName", "groupName",
	"offset", "innerOffset", "devMajor", "devMinor", "xattrs", "digest", "chunkOffset", "chunkSize", "chunkDigest",
	"rillName", "rillLinkName", "rillModTime"}

func (p *tocParser) entry(e *TOCEntry) bool {
	var seen uint32
	return p.object(func(key string) bool {
		var ok bool
		var bit uint32
		switch key {
		case "name":
			bit, ok = 1<<0, p.string(&e.Name)
		case "type":
			bit, ok = 1<<1, p.string(&e.Type)
		case "size":
			bit, ok = 1<<2, p.int64(&e.Size)
		case "modtime":
			bit, ok = 1<<3, p.string(&e.ModTime3339)
		case "linkName":
			bit, ok = 1<<4, p.string(&e.LinkName)
		case "mode":
			bit, ok = 1<<5, p.int64(&e.Mode)
		case "uid":
			bit, ok = 1<<6, p.int(&e.UID)
		case "gid":
			bit, ok = 1<<7, p.int(&e.GID)
		case "userName":
			bit, ok = 1<<8, p.string(&e.Uname)
		case "groupName":
			bit, ok = 1<<9, p.string(&e.Gname)
		case "offset":
			bit, ok = 1<<10, p.int64(&e.Offset)
		case "innerOffset":
			bit, ok = 1<<11, p.int64(&e.InnerOffset)
		case "devMajor":
			bit, ok = 1<<12, p.int(&e.DevMajor)
		case "devMinor":
			bit, ok = 1<<13, p.int(&e.DevMinor)
		case "xattrs":
			bit, ok = 1<<14, p.xattrs(&e.Xattrs)
		case "digest":
			bit, ok = 1<<15, p.string(&e.Digest)
		case "chunkOffset":
			bit, ok = 1<<16, p.int64(&e.ChunkOffset)
		case "chunkSize":
			bit, ok = 1<<17, p.int64(&e.ChunkSize)
		case "chunkDigest":
			bit, ok = 1<<18, p.string(&e.ChunkDigest)
		case "rillName":
			bit, ok = 1<<19, p.bytes(&e.RillName)
		case "rillLinkName":
			bit, ok = 1<<20, p.bytes(&e.RillLinkName)
		case "rillModTime":
			bit, ok = 1<<21, p.string(&e.RillModTime)
		default:
			return p.unknown(key, entryKeys)
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	})
}

func (p *tocParser) xattrs(v *map[string][]byte) bool {
	if p.null() {
		*v = nil
		return true
	}
	m := map[string][]byte{}
	ok := p.object(func(key string) bool {
		var b []byte
		if !p.bytes(&b) {
			return false
		}
		m[key] = b
		return true
	})
	*v = m
	return ok
}
