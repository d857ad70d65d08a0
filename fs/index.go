package fs

import (
	"fmt"

	"github.com/rillstream/rill/artifact"
)

// The tree of a layer is artifact's: one definition of the TOC a node accepts, shared with
// the converter (rill create refuses a layer no node would stream).
type (
	// Node is a file, directory, link or device of a layer.
	Node = artifact.Node
	// Kind is the kind of a Node.
	Kind = artifact.Kind
	// Chunk is one piece of a regular file.
	Chunk = artifact.Chunk
)

// The kinds of nodes.
const (
	KindDir      = artifact.KindDir
	KindReg      = artifact.KindReg
	KindSymlink  = artifact.KindSymlink
	KindChar     = artifact.KindChar
	KindBlock    = artifact.KindBlock
	KindFifo     = artifact.KindFifo
	KindWhiteout = artifact.KindWhiteout
)

// Bounds on what one chunk may ask of the node (artifact.MaxChunkSize, artifact.MaxSegmentSize).
const (
	MaxChunkSize   = artifact.MaxChunkSize
	MaxSegmentSize = artifact.MaxSegmentSize
	maxNameLength  = artifact.MaxNameLength
)

// Index is a layer's validated tree, as the node serves it.
type Index struct {
	*artifact.Tree
}

// NewIndex validates a TOC and builds the layer's tree (artifact.NewTree). Any violation is
// an ErrInvalidTOC: the layer is not streamed.
func NewIndex(toc *TOC) (*Index, error) {
	t, err := artifact.NewTree(toc.JTOC, toc.Offset)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidTOC, err)
	}
	return &Index{Tree: t}, nil
}
