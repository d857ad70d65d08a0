package convert

import (
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// When several artifacts stream one manifest, every reader picks the same: a usable one,
// bound before referrer-only, newest first, then the lowest digest.
func TestArtifactChoiceIsDeterministic(t *testing.T) {
	at := func(d string, created int, bound bool, problem string) Artifact {
		return Artifact{Descriptor: ocispec.Descriptor{Digest: digest.FromString(d)}, Created: time.Unix(int64(created), 0), Bound: bound, Problem: problem}
	}
	cases := []struct {
		name string
		as   []Artifact
		want digest.Digest
	}{
		{"bound wins over newer referrers", []Artifact{at("new", 9, false, ""), at("bound", 1, true, "")}, digest.FromString("bound")},
		{"newest referrer", []Artifact{at("old", 1, false, ""), at("new", 9, false, "")}, digest.FromString("new")},
		{"same time: lowest digest", []Artifact{at("a", 5, false, ""), at("b", 5, false, ""), at("c", 5, false, "")}, minDigest("a", "b", "c")},
		{"a broken bound artifact is never chosen", []Artifact{at("bound", 9, true, "its subject is not M"), at("ok", 1, false, "")}, digest.FromString("ok")},
		{"nothing usable", []Artifact{at("x", 1, true, "missing")}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, order := range [][]Artifact{c.as, reversed(c.as)} {
				as := append([]Artifact(nil), order...)
				sortArtifacts(as)
				var got digest.Digest
				if a := chosen(as); a != nil {
					got = a.Descriptor.Digest
				}
				if got != c.want {
					t.Fatalf("chose %s, want %s", got, c.want)
				}
			}
		})
	}
}

func reversed(as []Artifact) []Artifact {
	out := make([]Artifact, len(as))
	for i, a := range as {
		out[len(as)-1-i] = a
	}
	return out
}

func minDigest(ss ...string) digest.Digest {
	var m digest.Digest
	for _, s := range ss {
		if d := digest.FromString(s); m == "" || d < m {
			m = d
		}
	}
	return m
}
