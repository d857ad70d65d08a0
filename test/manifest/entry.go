// Package manifest defines the canonical text form of a file tree that the e2e tests compare:
// the checker prints it for the tree it sees inside a container, and the tests compute it for
// the tree the image's layers describe. Two trees are equal exactly when their lines are.
//
// One line per path, sorted by path:
//
//	"/fixture/a.txt" file mode=0644 uid=0 gid=0 size=6 mtime=1700000000.000000000 sha256=… xattr:user.k="v" links="/fixture/a.txt"
//
// Fields that do not apply to a type are left out (directories have no size, symlinks carry
// their target instead of a digest). Paths and values are quoted with strconv.Quote so that
// spaces and non-ASCII bytes stay unambiguous.
package manifest

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Entry types.
const (
	TypeDir     = "dir"
	TypeFile    = "file"
	TypeSymlink = "symlink"
	TypeFifo    = "fifo"
)

// Entry is one path of a tree.
type Entry struct {
	Path string // absolute and clean
	Type string // one of the Type constants
	// Mode holds the permission bits and the setuid (04000), setgid (02000) and sticky (01000)
	// bits, as in a tar header. Symlinks have none (their mode is not meaningful on Linux).
	Mode uint32
	UID  int
	GID  int
	Size int64 // regular files only
	// Mtime is, for regular files only, the modification time in nanoseconds since the epoch.
	Mtime  int64
	SHA256 string // regular files only, hex
	Target string // symlinks only
	// Xattrs holds the user.* extended attributes (other namespaces are the runtime's business).
	Xattrs map[string]string
	// LinkGroup is, for a regular file with more than one name in the tree, the smallest of
	// those names; empty otherwise. Equal LinkGroups mean the paths share one inode.
	LinkGroup string
	// Stat holds what stat(2) and getdents(2) answer beyond what a layer describes (the
	// checker's -stat mode, compared with containerd's extraction, not with the layers).
	Stat *Stat
}

// Stat is what a local file system answers beyond a layer's metadata.
type Stat struct {
	Blocks int64 // st_blocks (512-byte units)
	// Directories only:
	Size  int64  // st_size
	Mtime int64  // nanoseconds since the epoch; -1 when not compared (the runtime changes it)
	Dots  string // the "." and ".." entries a listing holds, comma-separated
}

// String returns the canonical line of e.
func (e Entry) String() string {
	var b strings.Builder
	b.WriteString(strconv.Quote(e.Path))
	b.WriteByte(' ')
	b.WriteString(e.Type)
	if e.Type != TypeSymlink {
		fmt.Fprintf(&b, " mode=%04o", e.Mode)
	}
	fmt.Fprintf(&b, " uid=%d gid=%d", e.UID, e.GID)
	switch e.Type {
	case TypeFile:
		fmt.Fprintf(&b, " size=%d mtime=%d.%09d sha256=%s", e.Size, e.Mtime/1e9, e.Mtime%1e9, e.SHA256)
	case TypeSymlink:
		fmt.Fprintf(&b, " target=%s", strconv.Quote(e.Target))
	}
	keys := make([]string, 0, len(e.Xattrs))
	for k := range e.Xattrs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " xattr:%s=%s", k, strconv.Quote(e.Xattrs[k]))
	}
	if e.LinkGroup != "" {
		fmt.Fprintf(&b, " links=%s", strconv.Quote(e.LinkGroup))
	}
	if st := e.Stat; st != nil {
		fmt.Fprintf(&b, " blocks=%d", st.Blocks)
		if e.Type == TypeDir {
			fmt.Fprintf(&b, " dirsize=%d dots=%q", st.Size, st.Dots)
			if st.Mtime >= 0 {
				fmt.Fprintf(&b, " dirmtime=%d.%09d", st.Mtime/1e9, st.Mtime%1e9)
			}
		}
	}
	return b.String()
}

// Lines returns the canonical lines of entries, sorted by path.
func Lines(entries []Entry) []string {
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	lines := make([]string, len(sorted))
	for i, e := range sorted {
		lines[i] = e.String()
	}
	return lines
}

// Text returns the canonical form of entries: their lines, each ending in a newline.
func Text(entries []Entry) string {
	lines := Lines(entries)
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// SetLinkGroups fills LinkGroup for entries that share an inode. inode maps the index of an
// entry to an identity comparable across entries (entries absent from the map have none).
func SetLinkGroups(entries []Entry, inode map[int]any) {
	groups := map[any][]int{}
	for i, id := range inode {
		groups[id] = append(groups[id], i)
	}
	for _, members := range groups {
		if len(members) < 2 {
			continue
		}
		first := entries[members[0]].Path
		for _, i := range members[1:] {
			first = min(first, entries[i].Path)
		}
		for _, i := range members {
			entries[i].LinkGroup = first
		}
	}
}
