package artifact

import (
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestMediaTypes(t *testing.T) {
	for _, c := range []struct {
		mt              string
		index, manifest bool
	}{
		{ocispec.MediaTypeImageIndex, true, false},
		{MediaTypeDockerManifestList, true, false},
		{ocispec.MediaTypeImageManifest, false, true},
		{MediaTypeDockerManifest, false, true},
		{"application/vnd.example.manifest.list.v2+json", false, false}, // a suffix is not enough
		{ocispec.MediaTypeImageConfig, false, false},
		{"", false, false},
	} {
		if IsIndex(c.mt) != c.index || IsManifest(c.mt) != c.manifest {
			t.Errorf("%q: index %v manifest %v, want %v %v", c.mt, IsIndex(c.mt), IsManifest(c.mt), c.index, c.manifest)
		}
	}
}

func TestStreams(t *testing.T) {
	m := ocispec.Manifest{Layers: []ocispec.Descriptor{{Digest: digest.FromString("l0")}, {Digest: digest.FromString("l1")}}}
	subject := digest.FromString("M")
	good := func() ocispec.Manifest {
		s := ocispec.Manifest{ArtifactType: ArtifactType, Subject: &ocispec.Descriptor{Digest: subject},
			Annotations: map[string]string{AnnotationPlatform: "linux/amd64"}}
		for _, l := range m.Layers {
			s.Layers = append(s.Layers, ocispec.Descriptor{Annotations: map[string]string{AnnotationOriginalDigest: l.Digest.String(), AnnotationTOCDigest: digest.FromString("toc").String()}})
		}
		return s
	}
	for _, c := range []struct {
		name     string
		edit     func(s *ocispec.Manifest)
		image    *ocispec.Manifest
		platform string
		want     string // "" when it streams
	}{
		{"streams", func(*ocispec.Manifest) {}, &m, "linux/amd64", ""},
		{"another type", func(s *ocispec.Manifest) { s.ArtifactType = "application/x" }, &m, "", "artifactType"},
		{"no subject", func(s *ocispec.Manifest) { s.Subject = nil }, &m, "", "subject"},
		{"another subject", func(s *ocispec.Manifest) { s.Subject = &ocispec.Descriptor{Digest: digest.FromString("N")} }, &m, "", "subject"},
		{"a layer fewer", func(s *ocispec.Manifest) { s.Layers = s.Layers[:1] }, &m, "", "1 layers, the image 2"},
		{"layers swapped", func(s *ocispec.Manifest) { s.Layers[0], s.Layers[1] = s.Layers[1], s.Layers[0] }, &m, "", "layer 0 was converted from"},
		{"no TOC digest", func(s *ocispec.Manifest) { delete(s.Layers[1].Annotations, AnnotationTOCDigest) }, &m, "", "layer 1 has no TOC digest"},
		{"another platform", func(*ocispec.Manifest) {}, &m, "linux/arm64", `made for platform "linux/amd64"`},
		{"platform unknown", func(*ocispec.Manifest) {}, &m, "", ""},
		{"image not read: layers unchecked", func(s *ocispec.Manifest) { s.Layers = nil }, nil, "linux/amd64", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := good()
			c.edit(&s)
			err := Streams(s, subject, c.image, c.platform)
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Errorf("Streams: %v, want %q", err, c.want)
			}
		})
	}
}

func TestCreated(t *testing.T) {
	at := time.Date(2026, 12, 5, 13, 0, 0, 0, time.UTC)
	if got := Created(map[string]string{AnnotationCreated: "2026-12-05T13:00:00Z"}); !got.Equal(at) {
		t.Errorf("Created: %v", got)
	}
	for _, bad := range []map[string]string{nil, {AnnotationCreated: "yesterday"}} {
		if got := Created(bad); !got.IsZero() {
			t.Errorf("Created(%v) = %v, want zero", bad, got)
		}
	}
}

// Several artifacts of one image: every reader chooses the same one.
func TestOrderOfChoice(t *testing.T) {
	day := func(d int) time.Time { return time.Date(2026, 1, d, 0, 0, 0, 0, time.UTC) }
	c := func(name string, created time.Time, bound, usable bool) Candidate {
		return Candidate{Digest: digest.Digest("sha256:" + name), Created: created, Bound: bound, Usable: usable}
	}
	cs := []Candidate{
		c("f-broken-bound", day(9), true, false),
		c("e-old-referrer", day(1), false, true),
		c("d-new-referrer", day(5), false, true),
		c("b-undated", time.Time{}, false, true),
		c("a-undated", time.Time{}, false, true),
		c("c-bound", day(2), true, true),
	}
	sort.Slice(cs, func(i, j int) bool { return Before(cs[i], cs[j]) })
	var got []string
	for _, x := range cs {
		got = append(got, x.Digest.Encoded())
	}
	want := []string{"c-bound", "d-new-referrer", "e-old-referrer", "a-undated", "b-undated", "f-broken-bound"}
	if !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}
