package convert

import (
	"github.com/opencontainers/go-digest"
)

// Phase is a step in the life of one layer during Create.
type Phase string

// The phases of a layer, in order.
const (
	PhaseConverting Phase = "converting" // reading the original and writing eStargz
	PhaseVerifying  Phase = "verifying"  // checking the result with the eStargz reader
	PhasePushing    Phase = "pushing"    // uploading (skipped when the registry has it)
	PhaseDone       Phase = "done"
)

// Progress reports the state of one layer.
type Progress struct {
	// Original is the digest of the layer being converted; Index and Count place it in its
	// manifest (Index from 0).
	Original     digest.Digest
	Index, Count int
	Platform     string
	Phase        Phase
	// Read and Size are the compressed bytes of the original read so far, of Size.
	Read, Size int64
	// Result is set in PhaseDone.
	Result *Layer
}
