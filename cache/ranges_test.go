package cache

import (
	"math/rand/v2"
	"testing"
)

// TestSpansAgainstBitmap checks the interval set against a bitmap, over random additions.
func TestSpansAgainstBitmap(t *testing.T) {
	const size = 3 * blockSize
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var s spans
		var bits [size]bool
		for range 1 + r.IntN(12) {
			start := r.Int64N(size)
			end := start + 1 + r.Int64N(min(size-start, 1+r.Int64N(2*blockSize)))
			s = s.add(start, end)
			for i := start; i < end; i++ {
				bits[i] = true
			}
		}
		// Disjoint, sorted, non-adjacent.
		for i := range s {
			if s[i].start >= s[i].end || i > 0 && s[i-1].end >= s[i].start {
				t.Fatalf("round %d: malformed set %v", round, s)
			}
		}
		var n, blocks int64
		for i := range int64(size) {
			if bits[i] {
				n++
			}
		}
		for b := range int64(size / blockSize) {
			for i := b * blockSize; i < (b+1)*blockSize; i++ {
				if bits[i] {
					blocks++
					break
				}
			}
		}
		if s.bytes() != n || s.blocks() != blocks {
			t.Fatalf("round %d: %v has %d bytes in %d blocks, want %d in %d", round, s, s.bytes(), s.blocks(), n, blocks)
		}
		for range 20 {
			start := r.Int64N(size)
			end := start + r.Int64N(size-start+1)
			all := true
			for i := start; i < end; i++ {
				all = all && bits[i]
			}
			if s.covers(start, end) != all {
				t.Fatalf("round %d: covers(%d, %d) = %v on %v", round, start, end, !all, s)
			}
			var gapBytes int64
			prev := start
			for _, g := range s.gaps(start, end) {
				if g.start < prev || g.start >= g.end || g.end > end {
					t.Fatalf("round %d: gaps(%d, %d) malformed: %v", round, start, end, s.gaps(start, end))
				}
				for i := g.start; i < g.end; i++ {
					if bits[i] {
						t.Fatalf("round %d: gap %v covers a present byte", round, g)
					}
				}
				gapBytes += g.end - g.start
				prev = g.end
			}
			missing := int64(0)
			for i := start; i < end; i++ {
				if !bits[i] {
					missing++
				}
			}
			if gapBytes != missing {
				t.Fatalf("round %d: gaps(%d, %d) hold %d bytes, want %d", round, start, end, gapBytes, missing)
			}
		}
	}
}
