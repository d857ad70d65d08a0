package containerdconf

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Names of containerd's plugins and tables rill's entries go in.
const (
	CRIImagesV3  = "io.containerd.cri.v1.images" // version 3: CRI's image service
	CRIV2        = "io.containerd.grpc.v1.cri"   // version 2: CRI (containerd 1.7)
	TransferV3   = "io.containerd.transfer.v1.local"
	Snapshotter  = "rill" // the proxy plugin's name
	exportLabels = "enable_remote_snapshot_annotations"
)

// ErrManual is returned when the file holds rill's settings in a shape the text merge cannot
// edit safely (an inline table, a value spanning lines): the operator edits it by hand.
var ErrManual = errors.New("cannot merge automatically; edit the file by hand (see README, Enable it in containerd)")

// Options says what to merge.
type Options struct {
	// Address is rill's socket (proxy_plugins.rill.address).
	Address string
	// Platform is the unpack platform of the transfer service entry (version 3), e.g. linux/amd64.
	Platform string
	// Version is the format of a file written from nothing: 2 (containerd 1.7) or 3 (2.x).
	Version int
}

// Setting is one key rill needs, in a table.
type Setting struct {
	Table []string
	Key   string
	Value any // string or bool
}

// String is the setting as a line of TOML under its table.
func (s Setting) String() string {
	return fmt.Sprintf("[%s] %s = %s", renderPath(s.Table), s.Key, render(s.Value))
}

// Wanted lists the keys rill needs in a file of the given version.
func Wanted(version int, o Options) []Setting {
	proxy := []string{"proxy_plugins", Snapshotter}
	s := []Setting{
		{proxy, "type", "snapshot"},
		{proxy, "address", o.Address},
	}
	if version >= 3 {
		return append(s,
			Setting{join(proxy, []string{"exports"}), exportLabels, "true"},
			Setting{[]string{"plugins", CRIImagesV3}, "snapshotter", Snapshotter},
		)
	}
	cri := []string{"plugins", CRIV2, "containerd"}
	return append(s,
		Setting{cri, "snapshotter", Snapshotter},
		Setting{cri, "disable_snapshot_annotations", false},
	)
}

// Version returns the format version of a parsed config; 0 when the file names none.
func Version(doc map[string]any) int {
	switch v := doc["version"].(type) {
	case int64:
		return int(v)
	case float64:
		return int(v)
	}
	return 0
}

// Parse decodes a config.toml.
func Parse(text []byte) (map[string]any, error) {
	doc := map[string]any{}
	if err := toml.Unmarshal(text, &doc); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	return doc, nil
}

// Lookup returns the value at path in a parsed config.
func Lookup(doc map[string]any, path ...string) (any, bool) {
	var cur any = doc
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// UnpackEntries returns the transfer service's unpack_config entries of a version 3 config.
func UnpackEntries(doc map[string]any) []map[string]any {
	v, _ := Lookup(doc, "plugins", TransferV3, "unpack_config")
	var out []map[string]any
	switch l := v.(type) {
	case []any:
		for _, e := range l {
			if m, ok := e.(map[string]any); ok {
				out = append(out, m)
			}
		}
	case []map[string]any:
		out = l
	}
	return out
}

// Merge returns text with rill's entries merged in and a line per change; no changes means
// the file has them all already (text is returned unchanged). An empty text gets a new file
// of o.Version.
func Merge(text []byte, o Options) ([]byte, []string, error) {
	src := string(text)
	if strings.TrimSpace(src) == "" {
		v := o.Version
		if v == 0 {
			v = 3
		}
		src = fmt.Sprintf("# written by rill install-node\nversion = %d\n", v)
	}
	doc, err := Parse([]byte(src))
	if err != nil {
		return nil, nil, err
	}
	version := Version(doc)
	if version < 2 {
		return nil, nil, fmt.Errorf("the file names no version = 2 (containerd 1.7) or 3 (2.x); version 1 files are not supported: %w", ErrManual)
	}
	var changes []string
	for _, s := range Wanted(version, o) {
		if cur, ok := Lookup(doc, append(s.Table, s.Key)...); ok && equal(cur, s.Value) {
			continue
		}
		if src, err = set(src, doc, s); err != nil {
			return nil, nil, err
		}
		changes = append(changes, "set "+s.String())
		if doc, err = Parse([]byte(src)); err != nil {
			return nil, nil, fmt.Errorf("after setting %s: %w (%w)", s, err, ErrManual)
		}
	}
	if version >= 3 {
		var added []string
		src, added, err = addUnpack(src, doc, o.Platform)
		if err != nil {
			return nil, nil, err
		}
		changes = append(changes, added...)
	}
	if len(changes) == 0 {
		return text, nil, nil
	}
	if err := Verify([]byte(src), o); err != nil {
		return nil, nil, fmt.Errorf("merged file: %w (%w)", err, ErrManual)
	}
	return []byte(src), changes, nil
}

// Verify checks that text holds every entry rill needs.
func Verify(text []byte, o Options) error {
	doc, err := Parse(text)
	if err != nil {
		return err
	}
	version := Version(doc)
	for _, s := range Wanted(version, o) {
		if cur, ok := Lookup(doc, append(s.Table, s.Key)...); !ok || !equal(cur, s.Value) {
			return fmt.Errorf("%s is not set", s)
		}
	}
	if version >= 3 && rillUnpack(doc) == nil {
		return fmt.Errorf("no unpack_config entry names snapshotter %q", Snapshotter)
	}
	return nil
}

// rillUnpack returns the unpack_config entry naming rill, nil if none.
func rillUnpack(doc map[string]any) map[string]any {
	for _, e := range UnpackEntries(doc) {
		if e["snapshotter"] == Snapshotter {
			return e
		}
	}
	return nil
}

func equal(cur, want any) bool {
	switch w := want.(type) {
	case bool:
		b, ok := cur.(bool)
		return ok && b == w
	case string:
		s, ok := cur.(string)
		return ok && s == w
	}
	return false
}

// set writes one setting into src: it replaces the value of an existing key line, adds the
// key to its table's section, or appends the table at the end.
func set(src string, doc map[string]any, s Setting) (string, error) {
	lines, sc, err := scan(src)
	if err != nil {
		return "", fmt.Errorf("%w (%w)", err, ErrManual)
	}
	full := append(append([]string{}, s.Table...), s.Key)
	for i, l := range sc {
		if l.kind != kindKey || !samePath(l.path, full) {
			continue
		}
		if l.end != i {
			return "", fmt.Errorf("%s spans lines: %w", s, ErrManual)
		}
		lines[i] = lines[i][:l.valueStart] + " " + render(s.Value) + trailingComment(lines[i][l.valueStart:])
		return strings.Join(lines, "\n"), nil
	}
	if _, ok := Lookup(doc, full...); ok {
		return "", fmt.Errorf("%s is set where the text merge cannot find it (an inline table?): %w", s, ErrManual)
	}
	// The table's own section: add the key after its last key.
	for i, l := range sc {
		if l.kind == kindHeader && samePath(l.path, s.Table) {
			at, indent := sectionEnd(lines, sc, i)
			return insert(lines, at, indent+s.Key+" = "+render(s.Value)), nil
		}
	}
	// The table made by dotted keys in a section above it: add a dotted key beside them.
	for i, l := range sc {
		if l.kind == kindKey && len(l.table) < len(s.Table) && hasPrefix(s.Table, l.table) && hasPrefix(l.path, s.Table) && len(l.path) > len(s.Table) {
			rel := join(s.Table[len(l.table):], []string{s.Key})
			return insert(lines, l.end+1, indentOf(lines[i])+renderPath(rel)+" = "+render(s.Value)), nil
		}
	}
	return appendBlock(src, "["+renderPath(s.Table)+"]", []string{s.Key + " = " + render(s.Value)}), nil
}

// addUnpack appends a transfer service unpack_config entry for rill when none names it. When
// the file has no entries, containerd's default (overlayfs) goes in first: entries in the file
// replace the defaults, and pulls into overlayfs must keep working.
func addUnpack(src string, doc map[string]any, platform string) (string, []string, error) {
	if rillUnpack(doc) != nil {
		return src, nil, nil
	}
	_, lines, err := scan(src)
	if err != nil {
		return "", nil, fmt.Errorf("%w (%w)", err, ErrManual)
	}
	path := []string{"plugins", TransferV3, "unpack_config"}
	for _, l := range lines {
		if l.kind == kindKey && samePath(l.path, path) {
			return "", nil, fmt.Errorf("unpack_config is an inline array: %w", ErrManual)
		}
	}
	if platform == "" {
		platform = "linux/amd64"
	}
	header := "[[" + renderPath(path) + "]]"
	var changes []string
	if len(UnpackEntries(doc)) == 0 {
		src = appendBlock(src, "# containerd's default, kept: entries here replace the defaults.\n"+header,
			[]string{`platform = ` + render(platform), `snapshotter = "overlayfs"`, `differ = "walking"`})
		changes = append(changes, "add "+header+" snapshotter = \"overlayfs\" (containerd's default, which the next entry would replace)")
	}
	src = appendBlock(src, "# rill: transfer-service pulls (CRI, ctr) unpack into rill.\n"+header,
		[]string{`platform = ` + render(platform), `snapshotter = "rill"`, `differ = "walking"`})
	return src, append(changes, "add "+header+" snapshotter = \"rill\""), nil
}

// sectionEnd returns where a key goes in the section whose header is at line h (after its
// last key), and the indentation of its keys.
func sectionEnd(lines []string, sc []scanned, h int) (int, string) {
	at, indent := h+1, indentOf(lines[h])+"  "
	for j := h + 1; j < len(sc) && sc[j].section == h; j++ {
		if sc[j].kind == kindKey {
			at, indent = sc[j].end+1, indentOf(lines[j])
		}
	}
	return at, indent
}

func insert(lines []string, at int, line string) string {
	out := make([]string, 0, len(lines)+1)
	out = append(append(append(out, lines[:at]...), line), lines[at:]...)
	return strings.Join(out, "\n")
}

func appendBlock(src, header string, keys []string) string {
	var b strings.Builder
	b.WriteString(strings.TrimRight(src, "\n"))
	b.WriteString("\n\n" + header + "\n")
	for _, k := range keys {
		b.WriteString("  " + k + "\n")
	}
	return b.String()
}

func indentOf(l string) string { return l[:len(l)-len(strings.TrimLeft(l, " \t"))] }

// trailingComment returns the comment after the value in v (with a space before it), or "".
func trailingComment(v string) string {
	for k := 0; k < len(v); k++ {
		switch v[k] {
		case '"':
			for k++; k < len(v) && v[k] != '"'; k++ {
				if v[k] == '\\' {
					k++
				}
			}
		case '\'':
			for k++; k < len(v) && v[k] != '\''; k++ {
			}
		case '#':
			return " " + v[k:]
		}
	}
	return ""
}

func samePath(a, b []string) bool { return len(a) == len(b) && hasPrefix(a, b) }

func hasPrefix(p, prefix []string) bool {
	if len(p) < len(prefix) {
		return false
	}
	for i := range prefix {
		if p[i] != prefix[i] {
			return false
		}
	}
	return true
}

func renderPath(p []string) string {
	parts := make([]string, len(p))
	for i, s := range p {
		bare := s != ""
		for j := 0; j < len(s); j++ {
			bare = bare && isBare(s[j])
		}
		switch {
		case bare:
			parts[i] = s
		case !strings.Contains(s, "'"):
			parts[i] = "'" + s + "'"
		default:
			parts[i] = strconv.Quote(s)
		}
	}
	return strings.Join(parts, ".")
}

func render(v any) string {
	switch x := v.(type) {
	case bool:
		return strconv.FormatBool(x)
	case string:
		return strconv.Quote(x)
	}
	return fmt.Sprint(v)
}
