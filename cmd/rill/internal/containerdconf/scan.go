package containerdconf

import (
	"fmt"
	"strings"
)

// line kinds of a scanned file.
const (
	kindOther  = iota // blank, comment, or a continuation of a multi-line value
	kindHeader        // [table]
	kindArray         // [[array of tables]]
	kindKey           // key = value
)

// scanned is one line of the file as the scanner understood it.
type scanned struct {
	kind int
	// path is the table of a header, or the full key path (table + dotted key) of a key line.
	path []string
	// table is the table a key line is in (its header's path); section is the index of that
	// header's line, -1 before the first header.
	table   []string
	section int
	// end is the last line of a key's value (multi-line arrays and strings).
	end int
	// valueStart is the byte offset of the value in the line of a key.
	valueStart int
}

// scan splits text into lines and classifies each. It follows the subset of TOML containerd
// configs use: bare, "basic" and 'literal' keys, dotted keys, headers, arrays of tables, and
// values spanning lines (arrays, inline tables and multi-line strings).
func scan(text string) ([]string, []scanned, error) {
	lines := strings.Split(text, "\n")
	out := make([]scanned, len(lines))
	var table []string
	section := -1
	for i := 0; i < len(lines); i++ {
		s := strings.TrimSpace(lines[i])
		out[i] = scanned{kind: kindOther, table: table, section: section}
		switch {
		case s == "" || strings.HasPrefix(s, "#"):
		case strings.HasPrefix(s, "[["):
			p, rest, err := parseKey(s[2:], "]]")
			if err != nil {
				return nil, nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			if !isTail(rest) {
				return nil, nil, fmt.Errorf("line %d: unexpected %q after header", i+1, rest)
			}
			table, section = p, i
			out[i] = scanned{kind: kindArray, path: p, table: p, section: i}
		case strings.HasPrefix(s, "["):
			p, rest, err := parseKey(s[1:], "]")
			if err != nil {
				return nil, nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			if !isTail(rest) {
				return nil, nil, fmt.Errorf("line %d: unexpected %q after header", i+1, rest)
			}
			table, section = p, i
			out[i] = scanned{kind: kindHeader, path: p, table: p, section: i}
		default:
			k, rest, err := parseKey(s, "=")
			if err != nil {
				return nil, nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			valueOffset := len(lines[i]) - len(rest)
			end, err := valueEnd(lines, i, valueOffset)
			if err != nil {
				return nil, nil, err
			}
			out[i] = scanned{kind: kindKey, path: join(table, k), table: table, section: section, end: end, valueStart: valueOffset}
			for j := i + 1; j <= end; j++ {
				out[j] = scanned{kind: kindOther, table: table, section: section}
			}
			i = end
		}
	}
	return lines, out, nil
}

func isTail(rest string) bool {
	rest = strings.TrimSpace(rest)
	return rest == "" || strings.HasPrefix(rest, "#")
}

func join(a, b []string) []string {
	out := make([]string, 0, len(a)+len(b))
	return append(append(out, a...), b...)
}

// parseKey reads a dotted key from s up to the terminator term and returns the key's parts
// and what follows the terminator.
func parseKey(s, term string) ([]string, string, error) {
	var parts []string
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return nil, "", fmt.Errorf("unterminated key")
		}
		var part string
		switch s[0] {
		case '"':
			end := 1
			var b strings.Builder
			for ; end < len(s) && s[end] != '"'; end++ {
				if s[end] == '\\' && end+1 < len(s) {
					end++
				}
				b.WriteByte(s[end])
			}
			if end >= len(s) {
				return nil, "", fmt.Errorf("unterminated quoted key")
			}
			part, s = b.String(), s[end+1:]
		case '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil, "", fmt.Errorf("unterminated quoted key")
			}
			part, s = s[1:end+1], s[end+2:]
		default:
			end := 0
			for end < len(s) && isBare(s[end]) {
				end++
			}
			if end == 0 {
				return nil, "", fmt.Errorf("unexpected %q in key", s[:1])
			}
			part, s = s[:end], s[end:]
		}
		parts = append(parts, part)
		s = strings.TrimLeft(s, " \t")
		switch {
		case strings.HasPrefix(s, term):
			return parts, s[len(term):], nil
		case strings.HasPrefix(s, "."):
			s = s[1:]
		default:
			return nil, "", fmt.Errorf("expected %q or '.' after key %q", term, strings.Join(parts, "."))
		}
	}
}

func isBare(c byte) bool {
	return c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// valueEnd returns the last line of the value that starts at lines[i][off:]: brackets and
// braces open outside strings, and multi-line strings, carry it to the following lines.
func valueEnd(lines []string, i, off int) (int, error) {
	depth := 0
	inMulti := "" // `"""` or `'''` while inside a multi-line string
	for j := i; j < len(lines); j++ {
		l := lines[j]
		if j == i {
			l = l[off:]
		}
		for k := 0; k < len(l); k++ {
			if inMulti != "" {
				if strings.HasPrefix(l[k:], inMulti) {
					k += 2
					inMulti = ""
				} else if inMulti == `"""` && l[k] == '\\' {
					k++
				}
				continue
			}
			switch c := l[k]; {
			case strings.HasPrefix(l[k:], `"""`) || strings.HasPrefix(l[k:], `'''`):
				inMulti = l[k : k+3]
				k += 2
			case c == '"':
				for k++; k < len(l) && l[k] != '"'; k++ {
					if l[k] == '\\' {
						k++
					}
				}
			case c == '\'':
				for k++; k < len(l) && l[k] != '\''; k++ {
				}
			case c == '#':
				k = len(l)
			case c == '[' || c == '{':
				depth++
			case c == ']' || c == '}':
				depth--
			}
		}
		if depth <= 0 && inMulti == "" {
			return j, nil
		}
	}
	return 0, fmt.Errorf("line %d: value does not end", i+1)
}
