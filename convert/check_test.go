package convert

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/internal/testlayer"
)

// The check Create makes before pushing a layer accepts what ConvertLayer wrote and refuses
// a layer that is not what its description says.
func TestCheckConverted(t *testing.T) {
	blob, l := convert(t, gzipOf(t, tarOf(t, testlayer.EveryKind(), 0)), LayerOptions{ChunkSize: 64 << 10})
	cases := []struct {
		name   string
		blob   []byte
		change func(*Layer)
		ok     bool
	}{
		{"as converted", blob, func(*Layer) {}, true},
		{"another TOC digest", blob, func(l *Layer) { l.TOCDigest = digest.FromString("toc") }, false},
		{"another original diff_id", blob, func(l *Layer) { l.OriginalDiffID = digest.FromString("tar") }, false},
		{"another original length", blob, func(l *Layer) { l.OriginalSize-- }, false},
		{"another diff_id", blob, func(l *Layer) { l.DiffID = digest.FromString("all") }, false},
		{"truncated", blob[:len(blob)/2], func(*Layer) {}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := l
			c.change(&want)
			err := checkConverted(context.Background(), io.NewSectionReader(bytes.NewReader(c.blob), 0, int64(len(c.blob))), want)
			if (err == nil) != c.ok {
				t.Fatalf("checkConverted: %v, want ok=%v", err, c.ok)
			}
		})
	}
}
