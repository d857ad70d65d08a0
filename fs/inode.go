package fs

// Node IDs and inode numbers.
//
// The kernel names every file of a FUSE mount by the node ID the server gave it at lookup, and
// keeps using it for as long as it caches the entry — across a restart of rill-snapshotter
// too. So the ID of a node must not depend on the order of lookups, nor on the process: it is
// the node's position in a depth-first walk of the layer's tree (names in sorted order), the
// root 1, a hardlinked file once (at its first name). The same TOC, validated the same way,
// gives the same IDs in every process: idScheme names the walk, and a resumed layer checks it
// against what the first process recorded. The inode number a stat() shows is the node ID.

// idScheme names the numbering; a change to the walk must change it.
const idScheme = "tree-dfs-v1"

// nodeTable maps node IDs to the index's nodes and back.
type nodeTable struct {
	nodes  []*Node          // nodes[id-1]
	ids    map[*Node]uint64 // the inverse
	parent []uint64         // parent[id-1]: the directory the node was first found in (root: 1)
	name   []int32          // name[id-1]: the index of its name in that directory
}

func newNodeTable(root *Node) *nodeTable {
	t := &nodeTable{ids: map[*Node]uint64{}}
	t.add(root, 1, -1)
	var walk func(dir *Node, dirID uint64)
	walk = func(dir *Node, dirID uint64) {
		for i, child := range dir.Children {
			if _, seen := t.ids[child]; seen {
				continue // another name of a hardlinked file
			}
			id := t.add(child, dirID, int32(i))
			if child.Kind == KindDir {
				walk(child, id)
			}
		}
	}
	walk(root, 1)
	return t
}

func (t *nodeTable) add(n *Node, parent uint64, name int32) uint64 {
	t.nodes = append(t.nodes, n)
	id := uint64(len(t.nodes))
	t.ids[n] = id
	t.parent = append(t.parent, parent)
	t.name = append(t.name, name)
	return id
}

// node returns the node of id, or nil.
func (t *nodeTable) node(id uint64) *Node {
	if id == 0 || id > uint64(len(t.nodes)) {
		return nil
	}
	return t.nodes[id-1]
}

// id returns the ID of n (a node of the table).
func (t *nodeTable) id(n *Node) uint64 { return t.ids[n] }

// len returns how many nodes there are.
func (t *nodeTable) len() int { return len(t.nodes) }

// path returns the path of id in the layer ("/etc/passwd"; a hardlinked file's first name).
func (t *nodeTable) path(id uint64) string {
	if id <= 1 {
		return "/"
	}
	var parts []string
	for id > 1 {
		p := t.parent[id-1]
		parts = append(parts, t.nodes[p-1].Names[t.name[id-1]])
		id = p
	}
	var b []byte
	for i := len(parts) - 1; i >= 0; i-- {
		b = append(b, '/')
		b = append(b, parts[i]...)
	}
	return string(b)
}
