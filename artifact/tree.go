package artifact

import (
	"fmt"
	"os"
	"path"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// Kind is the kind of a node in a layer's tree.
type Kind uint8

// The kinds of nodes. Whiteout is an overlayfs whiteout: a 0/0 character device.
const (
	KindDir Kind = iota + 1
	KindReg
	KindSymlink
	KindChar
	KindBlock
	KindFifo
	KindWhiteout
)

// Names with a meaning in a layer rather than in the container's tree.
const (
	whiteoutPrefix     = ".wh."
	whiteoutOpaque     = ".wh..wh..opq"
	whiteoutMetaPrefix = ".wh..wh."
	// OpaqueXattr marks a directory that hides the lower layers' (overlayfs).
	OpaqueXattr = "trusted.overlay.opaque"
	// MaxNameLength is the longest name component (the kernel's NAME_MAX).
	MaxNameLength      = 255
	maxPathLength      = 4096
	maxXattrNameLength = 255
	// MaxXattrValueLength is the largest extended attribute value (the kernel's XATTR_SIZE_MAX).
	MaxXattrValueLength = 64 << 10
)

// Bounds on what one chunk may ask of the node. A read, a prefetch or the background fetch
// holds a chunk's compressed segment and its uncompressed bytes in memory at once, so a TOC
// that declared a 64 GiB chunk (or a chunk whose segment spans most of a huge blob) would have
// the daemon allocate that much, from a goroutine no read waits for. NewTree refuses such
// TOCs: the layer is then pulled in full.
const (
	// MaxSegmentSize bounds a segment of the blob's data: from one recorded gzip member to the
	// next (a chunk's compressed bytes with the tar headers that follow it before the next
	// chunk), or the headers before the first chunk.
	MaxSegmentSize = MaxChunkSize + 64<<20
)

// Chunk is one piece of a regular file, stored in the blob as its own gzip member.
type Chunk struct {
	// Offset and Size locate the chunk in the file.
	Offset, Size int64
	// BlobOffset is where the chunk's gzip member starts in the blob; BlobEnd where the next
	// recorded member starts (the chunk's compressed bytes lie in between).
	BlobOffset, BlobEnd int64
	// Digest is the digest of the chunk's uncompressed bytes.
	Digest digest.Digest
}

// Node is a file, directory, link or device of a layer. Its fields are ordered to keep it
// small: a layer has one per entry, and a node mounts tens of layers.
type Node struct {
	Kind Kind
	// Implied is set for directories the layer does not list but whose entries need them.
	Implied  bool
	Mode     uint32 // permission and special bits (setuid, setgid, sticky)
	UID, GID uint32
	// Nlink counts the names of a regular file (hardlinks share one Node).
	Nlink uint32
	Major uint32
	Minor uint32
	// ModTime is the modification time in unix seconds, ModTimeNsec its nanoseconds.
	ModTimeNsec uint32
	ModTime     int64
	Size        int64
	Link        string // symlink target
	Xattrs      map[string][]byte
	Chunks      []Chunk // regular files

	// Names of a directory's entries in sorted order, and Children their nodes (Children[i]
	// is named Names[i]); Child finds one by name.
	Names    []string
	Children []*Node
}

// Child returns the entry of directory n named name, or nil.
func (n *Node) Child(name string) *Node {
	if i := sort.SearchStrings(n.Names, name); i < len(n.Names) && n.Names[i] == name {
		return n.Children[i]
	}
	return nil
}

// Tree is a layer's validated tree: what a node serves of a TOC it accepts.
type Tree struct {
	Root *Node
	// Prioritized are the regular files an eStargz writer placed before the prefetch landmark,
	// in TOC order: a third-party eStargz image's start-up files.
	Prioritized []string
	// Files counts regular files (a hardlinked file once); Bytes their sizes.
	Files int
	Bytes int64
	// DataEnd is where the file data of the blob ends: the offset of the TOC's gzip member.
	DataEnd int64
	// Replaced are the regular files a later entry of the layer took out of the tree (a path
	// listed twice): not served, but their chunks are part of the blob's data, which the
	// original's diff_id covers.
	Replaced []*Node
}

// hidden are eStargz bookkeeping entries that are not part of the layer's content.
var hidden = map[string]bool{
	estargz.PrefetchLandmark:   true,
	estargz.NoPrefetchLandmark: true,
	estargz.TOCTarName:         true,
}

// NewTree is the one definition of a TOC a node accepts: it validates the TOC of a layer
// whose file data ends at dataEnd (the offset of the TOC's gzip member) and builds the tree
// the node serves, the tree containerd's archive.Apply extracts from the layer's tar: the
// layer's root entry is ignored, and a path listed twice takes its last entry (a directory
// listed again keeps its entries and takes the new metadata; anything else replaces what was
// there, a directory with its entries). A TOC it refuses is one no node streams: rill create
// refuses to convert such a layer, and nodes pull it in full.
func NewTree(toc *JTOC, dataEnd int64) (*Tree, error) {
	b := &indexBuilder{
		toc:     toc,
		dataEnd: dataEnd,
		nodes:   make(map[string]*Node, len(toc.Entries)+1),
		strs:    make(map[string]string, len(toc.Entries)),
	}
	b.idx = &Tree{Root: b.newDir(true)}
	b.nodes[""] = b.idx.Root
	b.idx.DataEnd = dataEnd
	if err := b.build(); err != nil {
		return nil, err
	}
	return b.idx, nil
}

// intern returns a copy of s shared by every equal string of the layer's index.
func (b *indexBuilder) intern(s string) string {
	if v, ok := b.strs[s]; ok {
		return v
	}
	v := b.clone(s)
	b.strs[v] = v
	return v
}

// clone copies s into the builder's string arena: blocks of stringBlock bytes, each one
// allocation for hundreds of names and digests (the strings of a tree live as long as it).
func (b *indexBuilder) clone(s string) string {
	if len(s) > stringBlock/4 {
		return strings.Clone(s)
	}
	if b.arena.Cap()-b.arena.Len() < len(s) {
		b.arena = strings.Builder{}
		b.arena.Grow(stringBlock)
	}
	b.arena.WriteString(s)
	all := b.arena.String()
	return all[len(all)-len(s):]
}

const stringBlock = 16 << 10

// newNode allocates a node from the builder's slab: a layer has one per entry.
func (b *indexBuilder) newNode(n Node) *Node {
	if len(b.slab) == 0 {
		b.slab = make([]Node, min(256, max(16, len(b.toc.Entries)/8)))
	}
	p := &b.slab[0]
	b.slab = b.slab[1:]
	*p = n
	return p
}

type indexBuilder struct {
	toc     *JTOC
	dataEnd int64
	// strs interns the strings the index keeps (names, link targets, xattr names): copies,
	// so that the decoded TOC is not kept alive by substrings of its strings, and one copy of
	// each distinct value per layer.
	strs map[string]string
	// regular files in TOC order, until the prefetch landmark.
	regOrder []string
	idx      *Tree
	// nodes by cleaned path.
	nodes map[string]*Node
	// offsets of every gzip member recorded in the TOC, to find where each chunk ends.
	offsets []int64
	chunked []*Node
	// arena holds the strings the tree keeps, slab its nodes.
	arena     strings.Builder
	slab      []Node
	chunkSlab []Chunk
}

func (b *indexBuilder) newDir(implied bool) *Node {
	return b.newNode(Node{Kind: KindDir, Mode: 0o755, Nlink: 2, Implied: implied})
}

func (b *indexBuilder) build() error {
	var lastFile *Node
	var lastFileName string
	for i, e := range b.toc.Entries {
		if e == nil {
			return fmt.Errorf("entry %d is null", i)
		}
		if e.Type == "chunk" {
			if err := b.addChunk(e, lastFile, lastFileName); err != nil {
				return err
			}
			continue
		}
		name, err := cleanName(e.RawName())
		if err != nil {
			return fmt.Errorf("entry %d: %v", i, err)
		}
		if name == "" {
			// containerd ignores an entry that resolves to the layer's root ("./"): the
			// snapshot's directory keeps its own metadata.
			lastFile, lastFileName = nil, ""
			continue
		}
		if name == estargz.PrefetchLandmark && b.idx.Prioritized == nil {
			b.idx.Prioritized = make([]string, len(b.regOrder))
			for i, p := range b.regOrder {
				b.idx.Prioritized[i] = b.clone(p)
			}
		}
		lastFile, lastFileName = nil, ""
		n, err := b.add(name, e)
		if err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
		if n != nil && n.Kind == KindReg && e.Type == "reg" {
			lastFile, lastFileName = n, name
			if b.idx.Prioritized == nil {
				b.regOrder = append(b.regOrder, name)
			}
		}
	}
	return b.finish()
}

// cleanName turns a TOC name into a path relative to the layer root, or explains why it is
// not one.
func cleanName(name string) (string, error) {
	if len(name) > maxPathLength {
		return "", fmt.Errorf("name of %d bytes is longer than %d", len(name), maxPathLength)
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("name %q contains NUL", name)
	}
	trimmed := strings.TrimPrefix(name, "./")
	trimmed = strings.TrimSuffix(trimmed, "/")
	if trimmed == "." || trimmed == "" {
		return "", nil
	}
	if strings.HasPrefix(trimmed, "/") {
		return "", fmt.Errorf("name %q is absolute", name)
	}
	for rest, more := trimmed, true; more; {
		var c string
		c, rest, more = strings.Cut(rest, "/")
		switch {
		case c == "" || c == ".":
			return "", fmt.Errorf("name %q has an empty or '.' component", name)
		case c == "..":
			return "", fmt.Errorf("name %q escapes the layer with '..'", name)
		case len(c) > MaxNameLength:
			return "", fmt.Errorf("name %q has a component longer than %d bytes", name, MaxNameLength)
		}
	}
	return trimmed, nil
}

// parent returns the directory node for dir, creating implied directories on the way.
func (b *indexBuilder) parent(dir string) (*Node, error) {
	if n, ok := b.nodes[dir]; ok {
		if n.Kind != KindDir {
			return nil, fmt.Errorf("parent %s is not a directory", dir)
		}
		return n, nil
	}
	grand, err := b.parent(parentOf(dir))
	if err != nil {
		return nil, err
	}
	n := b.newDir(true)
	b.link(grand, b.intern(path.Base(dir)), n)
	b.nodes[dir] = n
	return n, nil
}

func parentOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

// link adds n to dir as name; finish sorts the entries. place and parent check first that the
// name is free (b.nodes has every path).
func (b *indexBuilder) link(dir *Node, name string, n *Node) {
	dir.Names = append(dir.Names, name)
	dir.Children = append(dir.Children, n)
	if n.Kind == KindDir {
		dir.Nlink++
	}
}

func (b *indexBuilder) add(name string, e *TOCEntry) (*Node, error) {
	dir, err := b.parent(parentOf(name))
	if err != nil {
		return nil, err
	}
	base := b.intern(path.Base(name))

	if hidden[name] {
		return nil, nil
	}
	if base == whiteoutOpaque {
		if e.Type != "reg" {
			return nil, fmt.Errorf("opaque marker is a %s", e.Type)
		}
		if dir.Xattrs == nil {
			dir.Xattrs = map[string][]byte{}
		}
		dir.Xattrs[OpaqueXattr] = []byte("y")
		return nil, nil
	}
	if strings.HasPrefix(base, whiteoutMetaPrefix) {
		return nil, nil // aufs bookkeeping (.wh..wh.plnk, ...): not content
	}
	if target, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		if target == "" || target == "." || target == ".." {
			return nil, fmt.Errorf("whiteout of %q", target)
		}
		b.remove(dir, parentOf(name), target)
		return b.place(dir, joinPath(parentOf(name), target), target, b.newNode(Node{Kind: KindWhiteout, UID: uint32(e.UID), GID: uint32(e.GID), Nlink: 1}))
	}

	if existing, ok := b.nodes[name]; ok {
		if e.Type == "dir" && existing.Kind == KindDir {
			// A directory listed again (or implied by earlier entries, now listed itself):
			// containerd merges, keeping its entries and applying the new metadata.
			if err := b.applyMeta(existing, e); err != nil {
				return nil, err
			}
			existing.Implied = false
			return existing, nil
		}
		// Anything else replaces what was there, as containerd removes it first.
		b.remove(dir, parentOf(name), base)
	}

	var n *Node
	switch e.Type {
	case "dir":
		n = b.newDir(false)
	case "reg":
		if e.Size < 0 {
			return nil, fmt.Errorf("negative size %d", e.Size)
		}
		n = b.newNode(Node{Kind: KindReg, Size: e.Size, Nlink: 1})
		if e.Size > 0 {
			c, err := b.chunk(e, 0, e.Size)
			if err != nil {
				return nil, err
			}
			n.Chunks = b.oneChunk(c)
			b.chunked = append(b.chunked, n)
		}
	case "hardlink":
		target, err := cleanName(e.RawLinkName())
		if err != nil || target == "" {
			return nil, fmt.Errorf("hardlink target %q: invalid", e.RawLinkName())
		}
		t, ok := b.nodes[target]
		if !ok || t.Kind != KindReg {
			return nil, fmt.Errorf("hardlink to %q, which is not an earlier regular file", e.RawLinkName())
		}
		// The link's own header sets the metadata of the file it shares (containerd chowns,
		// chmods and times the new name).
		if err := b.applyMeta(t, e); err != nil {
			return nil, err
		}
		t.Nlink++
		return b.place(dir, name, base, t)
	case "symlink":
		link := e.RawLinkName()
		if link == "" || len(link) > maxPathLength || strings.ContainsRune(link, 0) {
			return nil, fmt.Errorf("symlink target %q: invalid", link)
		}
		n = b.newNode(Node{Kind: KindSymlink, Link: b.intern(link), Size: int64(len(link)), Nlink: 1})
	case "char", "block":
		if e.DevMajor < 0 || e.DevMinor < 0 || e.DevMajor > 0xfff || e.DevMinor > 0xfffff {
			return nil, fmt.Errorf("device number %d:%d out of range", e.DevMajor, e.DevMinor)
		}
		n = b.newNode(Node{Kind: KindChar, Major: uint32(e.DevMajor), Minor: uint32(e.DevMinor), Nlink: 1})
		if e.Type == "block" {
			n.Kind = KindBlock
		}
	case "fifo":
		n = b.newNode(Node{Kind: KindFifo, Nlink: 1})
	default:
		return nil, fmt.Errorf("unknown entry type %q", e.Type)
	}
	if err := b.applyMeta(n, e); err != nil {
		return nil, err
	}
	return b.place(dir, name, base, n)
}

func joinPath(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

// oneChunk returns a slice holding c, from a slab shared by the files of the layer (most have
// one chunk); a file with more grows its own slice.
func (b *indexBuilder) oneChunk(c Chunk) []Chunk {
	if len(b.chunkSlab) == 0 {
		b.chunkSlab = make([]Chunk, min(256, max(16, len(b.toc.Entries)/8)))
	}
	s := b.chunkSlab[:1:1]
	b.chunkSlab = b.chunkSlab[1:]
	s[0] = c
	return s
}

// remove takes base out of dir (named dirName), as containerd's extraction removes what an
// entry replaces: a directory with everything under it. Hardlinked files lose a name.
func (b *indexBuilder) remove(dir *Node, dirName, base string) {
	full := joinPath(dirName, base)
	n, ok := b.nodes[full]
	if !ok {
		return
	}
	for i, name := range dir.Names {
		if name == base && dir.Children[i] == n {
			dir.Names = append(dir.Names[:i], dir.Names[i+1:]...)
			dir.Children = append(dir.Children[:i], dir.Children[i+1:]...)
			break
		}
	}
	var forget func(p string, n *Node)
	forget = func(p string, n *Node) {
		delete(b.nodes, p)
		n.Nlink--
		if n.Kind == KindReg && n.Nlink == 0 && len(n.Chunks) > 0 {
			b.idx.Replaced = append(b.idx.Replaced, n)
		}
		if n.Kind == KindDir {
			for i, name := range n.Names {
				forget(p+"/"+name, n.Children[i])
			}
		}
	}
	forget(full, n)
	if n.Kind == KindDir {
		dir.Nlink--
	}
}

// place puts n under dir as base (its path is full), refusing to replace anything.
func (b *indexBuilder) place(dir *Node, full, base string, n *Node) (*Node, error) {
	if _, taken := b.nodes[full]; taken {
		return nil, fmt.Errorf("%s already exists in %q", base, parentOf(full))
	}
	b.link(dir, base, n)
	b.nodes[full] = n
	return n, nil
}

// applyMeta sets n's metadata from e; it refuses extended attributes that no file system could
// hold (the kernel's limits: names of 1 to 255 bytes without NUL, values of at most 64 KiB).
func (b *indexBuilder) applyMeta(n *Node, e *TOCEntry) error {
	for k, v := range e.Xattrs {
		if k == "" || len(k) > maxXattrNameLength || strings.ContainsRune(k, 0) {
			return fmt.Errorf("xattr name %q: invalid", k)
		}
		if len(v) > MaxXattrValueLength {
			return fmt.Errorf("xattr %s: value of %d bytes is longer than %d", k, len(v), MaxXattrValueLength)
		}
	}
	n.Mode = uint32(e.Mode) & 0o7777
	n.UID, n.GID = uint32(e.UID), uint32(e.GID)
	t := e.ModTime()
	n.ModTime, n.ModTimeNsec = t.Unix(), uint32(t.Nanosecond())
	for k, v := range e.Xattrs {
		if n.Xattrs == nil {
			n.Xattrs = map[string][]byte{}
		}
		n.Xattrs[b.intern(k)] = v
	}
	return nil
}

func (b *indexBuilder) chunk(e *TOCEntry, fileOffset, fileSize int64) (Chunk, error) {
	size := e.ChunkSize
	if size == 0 {
		size = fileSize - fileOffset // the last chunk leaves its size out: it ends the file
	}
	if e.InnerOffset != 0 {
		return Chunk{}, fmt.Errorf("chunks grouped into shared gzip members (innerOffset) are not supported")
	}
	if e.Offset <= 0 || e.Offset >= b.dataEnd {
		return Chunk{}, fmt.Errorf("chunk at %d: blob offset %d outside the data (%d bytes)", fileOffset, e.Offset, b.dataEnd)
	}
	if size <= 0 {
		return Chunk{}, fmt.Errorf("chunk at %d has size %d", fileOffset, size)
	}
	if size > MaxChunkSize {
		return Chunk{}, fmt.Errorf("chunk at %d has %d bytes, more than the limit of %d", fileOffset, size, MaxChunkSize)
	}
	if !isSHA256(e.ChunkDigest) {
		if _, err := digest.Parse(e.ChunkDigest); err != nil {
			return Chunk{}, fmt.Errorf("chunk at %d: digest %q: %v", fileOffset, e.ChunkDigest, err)
		}
	}
	b.offsets = append(b.offsets, e.Offset)
	return Chunk{Offset: fileOffset, Size: size, BlobOffset: e.Offset, Digest: digest.Digest(b.clone(e.ChunkDigest))}, nil
}

// isSHA256 reports whether d is a sha256 digest as digest.Parse accepts it (lower-case hex),
// without its regular expression: a TOC has one per chunk.
func isSHA256(d string) bool {
	hex, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hex) != 64 {
		return false
	}
	for i := 0; i < len(hex); i++ {
		if !lowerHex[hex[i]] {
			return false
		}
	}
	return true
}

var lowerHex = func() (t [256]bool) {
	for _, c := range "0123456789abcdef" {
		t[c] = true
	}
	return t
}()

func (b *indexBuilder) addChunk(e *TOCEntry, file *Node, fileName string) error {
	name, err := cleanName(e.RawName())
	if file == nil || err != nil || name != fileName || len(file.Chunks) == 0 {
		return fmt.Errorf("chunk of %q does not follow its file", e.RawName())
	}
	last := file.Chunks[len(file.Chunks)-1]
	if e.ChunkOffset != last.Offset+last.Size {
		return fmt.Errorf("%s: chunk at %d does not follow the chunk ending at %d", name, e.ChunkOffset, last.Offset+last.Size)
	}
	c, err := b.chunk(e, e.ChunkOffset, file.Size)
	if err != nil {
		return fmt.Errorf("%s: %v", name, err)
	}
	if c.BlobOffset <= last.BlobOffset {
		return fmt.Errorf("%s: chunk at %d is stored before the previous chunk", name, e.ChunkOffset)
	}
	file.Chunks = append(file.Chunks, c)
	return nil
}

// finish checks that chunks tile their files, computes where each chunk's compressed bytes
// end, and sorts directory listings.
func (b *indexBuilder) finish() error {
	slices.Sort(b.offsets)
	for i := 1; i < len(b.offsets); i++ {
		if b.offsets[i] == b.offsets[i-1] {
			return fmt.Errorf("two chunks stored at blob offset %d", b.offsets[i])
		}
	}
	// Every byte of the data lies in one segment, and each segment is fetched whole.
	prev := int64(0)
	for _, off := range append(b.offsets, b.dataEnd) {
		if off-prev > MaxSegmentSize {
			return fmt.Errorf("%d bytes of the blob from offset %d to the next gzip member the TOC records (at %d), more than the limit of %d", off-prev, prev, off, MaxSegmentSize)
		}
		prev = off
	}
	for _, n := range b.chunked {
		last := n.Chunks[len(n.Chunks)-1]
		if last.Offset+last.Size != n.Size {
			return fmt.Errorf("chunks of a %d-byte file end at %d", n.Size, last.Offset+last.Size)
		}
		for i := range n.Chunks {
			c := &n.Chunks[i]
			j := sort.Search(len(b.offsets), func(k int) bool { return b.offsets[k] > c.BlobOffset })
			c.BlobEnd = b.dataEnd
			if j < len(b.offsets) {
				c.BlobEnd = b.offsets[j]
			}
		}
	}
	// A directory the layer only implies, extracted, is created in its parent: under a
	// set-group-ID parent it takes the parent's group.
	var walk func(n *Node)
	walk = func(n *Node) {
		for _, c := range n.Children {
			if c.Kind == KindDir {
				if c.Implied {
					ImpliedDefaults(c, n)
				}
				walk(c)
			}
		}
	}
	walk(b.idx.Root)
	// Count what the tree holds (a file listed twice counts once, a hardlinked one too).
	var seen map[*Node]bool
	for _, n := range b.nodes {
		if n.Kind != KindReg {
			continue
		}
		if n.Nlink > 1 {
			if seen[n] {
				continue
			}
			if seen == nil {
				seen = map[*Node]bool{}
			}
			seen[n] = true
		}
		b.idx.Files++
		b.idx.Bytes += n.Size
	}
	// The listings of all directories share two arrays of exactly their size.
	total := 0
	for _, n := range b.nodes {
		total += len(n.Names)
	}
	names, children := make([]string, 0, total), make([]*Node, 0, total)
	for _, n := range b.nodes {
		if n.Kind != KindDir {
			continue
		}
		sort.Sort(listing{n.Names, n.Children})
		start := len(names)
		names, children = append(names, n.Names...), append(children, n.Children...)
		n.Names, n.Children = names[start:len(names):len(names)], children[start:len(children):len(children)]
	}
	return nil
}

// listing sorts a directory's entries by name.
type listing struct {
	names    []string
	children []*Node
}

func (l listing) Len() int           { return len(l.names) }
func (l listing) Less(i, j int) bool { return l.names[i] < l.names[j] }
func (l listing) Swap(i, j int) {
	l.names[i], l.names[j] = l.names[j], l.names[i]
	l.children[i], l.children[j] = l.children[j], l.children[i]
}

// FileMode returns the full mode (type and permission bits) of n as stat(2) reports it.
func (n *Node) FileMode() uint32 {
	perm := n.Mode
	switch n.Kind {
	case KindDir:
		return syscall.S_IFDIR | perm
	case KindReg:
		return syscall.S_IFREG | perm
	case KindSymlink:
		return syscall.S_IFLNK | 0o777
	case KindChar:
		return syscall.S_IFCHR | perm
	case KindBlock:
		return syscall.S_IFBLK | perm
	case KindFifo:
		return syscall.S_IFIFO | perm
	case KindWhiteout:
		return syscall.S_IFCHR
	}
	return perm
}

// GoMode is FileMode as an os.FileMode, for tests and logs.
func (n *Node) GoMode() os.FileMode {
	m := os.FileMode(n.Mode & 0o777)
	if n.Mode&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if n.Mode&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if n.Mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	switch n.Kind {
	case KindDir:
		m |= os.ModeDir
	case KindSymlink:
		m = os.ModeSymlink | 0o777
	case KindChar, KindWhiteout:
		m |= os.ModeDevice | os.ModeCharDevice
	case KindBlock:
		m |= os.ModeDevice
	case KindFifo:
		m |= os.ModeNamedPipe
	}
	return m
}

// DropWhiteouts removes the whiteouts and opaque markers of a layer that has no layer below
// it: they hide nothing there, and overlayfs would list whiteouts in directories it does not
// merge (as entries that cannot be opened). containerd's extraction of a first layer drops
// them the same way.
func (idx *Tree) DropWhiteouts() {
	var walk func(n *Node)
	walk = func(n *Node) {
		delete(n.Xattrs, OpaqueXattr)
		names, children := n.Names[:0], n.Children[:0]
		for i, name := range n.Names {
			c := n.Children[i]
			if c.Kind == KindWhiteout {
				continue
			}
			names, children = append(names, name), append(children, c)
			if c.Kind == KindDir {
				walk(c)
			}
		}
		n.Names, n.Children = names, children
	}
	walk(idx.Root)
}

// Lookup returns the node at path (relative to the layer root, "/" and "./" prefixes
// allowed), or nil.
func (idx *Tree) Lookup(path string) *Node {
	name, err := cleanName(strings.TrimPrefix(path, "/"))
	if err != nil {
		return nil
	}
	n := idx.Root
	if name == "" {
		return n
	}
	for _, c := range strings.Split(name, "/") {
		if n.Kind != KindDir {
			return nil
		}
		if n = n.Child(c); n == nil {
			return nil
		}
	}
	return n
}

// ImpliedDefaults gives n, a directory implied under parent, the metadata an extraction gives
// a directory it creates: mode 0755, owned by root — but for the group of a set-group-ID
// parent, which the kernel gives new entries of such a directory.
func ImpliedDefaults(n, parent *Node) {
	n.Mode, n.UID, n.GID = 0o755, 0, 0
	if parent.Mode&0o2000 != 0 {
		n.GID = parent.GID
	}
}
