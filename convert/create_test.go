package convert

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/internal/testlayer"
	"github.com/rillstream/rill/remote"
)

// twoLayers is an image whose second layer omits its parent directories, as some image tools
// write them.
func twoLayers() [][]testlayer.Entry {
	return [][]testlayer.Entry{
		testlayer.EveryKind(),
		{
			testlayer.Reg("opt/app/bin/server", testlayer.RandomBytes(7, 200<<10), 0o755),
			testlayer.Reg("opt/app/lib/libapp.so", testlayer.RandomBytes(8, 90<<10), 0o644),
			testlayer.Reg("etc/hostname", []byte("replaced\n"), 0o644),
		},
	}
}

// The life of a streaming artifact as an operator sees it, against both kinds of registry:
// create binds it to the tag, show and verify find it, create again changes nothing,
// --force replaces it, delete --streaming-only puts the tag back, delete removes everything.
func TestArtifactLifecycle(t *testing.T) {
	for _, kind := range registryKinds() {
		t.Run(kind, func(t *testing.T) {
			ctx := testCtx(t)
			host := startRegistry(t, kind, nil)
			reg := testRegistry(t)
			c := testConverter(t, reg)
			ref := host + "/app:v1"
			img := pushImage(t, reg, ref, imageSpec{platform: linuxAMD64, layers: twoLayers()})
			profile := []string{"opt/app/bin/server", "opt/app/lib/libapp.so", "etc/hostname"}

			res, err := c.Create(ctx, ref, CreateOptions{Bind: true, Profile: profile})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if len(res.Artifacts) != 1 || res.Artifacts[0].Existing || !res.Bound || res.Unchanged {
				t.Fatalf("create result: %+v", res)
			}
			s := res.Artifacts[0].Artifact
			assertArtifact(t, reg, img, s, profile)
			assertBinding(t, reg, ref, map[digest.Digest]digest.Digest{img.manifest.Digest: s.Digest}, []digest.Digest{img.manifest.Digest})
			assertReferrers(t, reg, img, []digest.Digest{s.Digest})

			st, err := c.Show(ctx, ref)
			if err != nil {
				t.Fatalf("show: %v", err)
			}
			if !st.Bound || len(st.Manifests) != 1 || len(st.Manifests[0].Artifacts) != 1 {
				t.Fatalf("show: %+v", st)
			}
			if a := st.Manifests[0].Artifacts[0]; a.Descriptor.Digest != s.Digest || !a.Bound || a.Problem != "" || a.Platform != "linux/amd64" || a.ProfileEntries != len(profile) || a.Format != artifact.FormatName {
				t.Fatalf("show lists %+v", a)
			}
			audits, err := c.Verify(ctx, ref)
			if err != nil || len(audits) != 1 || len(audits[0].Problems) != 0 {
				t.Fatalf("verify: %v %+v", err, audits)
			}

			again, err := c.Create(ctx, ref, CreateOptions{Bind: true})
			if err != nil || !again.Unchanged || !again.Artifacts[0].Existing || again.Artifacts[0].Artifact.Digest != s.Digest {
				t.Fatalf("create again: %v %+v", err, again)
			}

			forced, err := c.Create(ctx, ref, CreateOptions{Bind: true, Force: true})
			if err != nil {
				t.Fatalf("create --force: %v", err)
			}
			s2 := forced.Artifacts[0].Artifact
			if s2.Digest == s.Digest || !slices.Equal(forced.Removed, []digest.Digest{s.Digest}) {
				t.Fatalf("create --force made %s and removed %v; had %s", s2.Digest, forced.Removed, s.Digest)
			}
			assertBinding(t, reg, ref, map[digest.Digest]digest.Digest{img.manifest.Digest: s2.Digest}, []digest.Digest{img.manifest.Digest})
			assertReferrers(t, reg, img, []digest.Digest{s2.Digest})

			del, err := c.Delete(ctx, ref, true)
			if err != nil || !del.Unbound || !slices.Equal(del.Artifacts, []digest.Digest{s2.Digest}) {
				t.Fatalf("delete --streaming-only: %v %+v", err, del)
			}
			if d, err := reg.Resolve(ctx, ref); err != nil || d.Digest != img.manifest.Digest {
				t.Fatalf("after delete --streaming-only the tag names %v (%v), want the original %s", d.Digest, err, img.manifest.Digest)
			}
			assertReferrers(t, reg, img, nil)
			assertGone(t, reg, host+"/app", s2.Digest)

			res, err = c.Create(ctx, ref, CreateOptions{Bind: true})
			if err != nil {
				t.Fatal(err)
			}
			s3 := res.Artifacts[0].Artifact
			del, err = c.Delete(ctx, ref, false)
			if err != nil {
				t.Fatalf("delete: %v", err)
			}
			if _, err := reg.Resolve(ctx, ref); !errdefs.IsNotFound(err) {
				t.Errorf("after delete the tag resolves: %v", err)
			}
			assertGone(t, reg, host+"/app", img.manifest.Digest, s3.Digest)
			if _, err := reg.Resolve(ctx, host+"/app:"+remote.FallbackTag(img.manifest.Digest)); !errdefs.IsNotFound(err) {
				t.Errorf("after delete the referrers fallback tag resolves: %v", err)
			}
		})
	}
}

// A multi-arch index: only the streaming platform gets an artifact; the binding index lists
// the same platform manifests with the same digests, and arm64 nodes select arm64's as before.
func TestCreateMultiArch(t *testing.T) {
	for _, kind := range registryKinds() {
		t.Run(kind, func(t *testing.T) {
			ctx := testCtx(t)
			host := startRegistry(t, kind, nil)
			reg := testRegistry(t)
			c := testConverter(t, reg)
			ref := host + "/multi:v1"
			ims := map[string]*testImage{
				"linux/amd64":    pushManifest(t, reg, host+"/multi", imageSpec{platform: linuxAMD64, layers: twoLayers()}),
				"linux/arm64/v8": pushManifest(t, reg, host+"/multi", imageSpec{platform: linuxARM64, layers: [][]testlayer.Entry{{testlayer.Reg("bin/arm", testlayer.RandomBytes(3, 5000), 0o755)}}}),
			}
			order := []string{"linux/amd64", "linux/arm64/v8"}
			pushIndex(t, reg, ref, ims, order)

			res, err := c.Create(ctx, ref, CreateOptions{Bind: true})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if len(res.Artifacts) != 1 || res.Artifacts[0].Platform != "linux/amd64" {
				t.Fatalf("artifacts for %+v, want linux/amd64 only", res.Artifacts)
			}
			s := res.Artifacts[0].Artifact
			assertArtifact(t, reg, ims["linux/amd64"], s, nil)
			assertBinding(t, reg, ref, map[digest.Digest]digest.Digest{ims["linux/amd64"].manifest.Digest: s.Digest},
				[]digest.Digest{ims["linux/amd64"].manifest.Digest, ims["linux/arm64/v8"].manifest.Digest})
			assertReferrers(t, reg, ims["linux/arm64/v8"], nil)

			raw := fetchTag(t, reg, ref)
			for p, im := range ims {
				pl, _ := platforms.Parse(p)
				d, err := remote.SelectPlatform(raw, platforms.Only(pl))
				if err != nil || d.Digest != im.manifest.Digest {
					t.Errorf("a %s node selects %v (%v) from the binding index, want %s", p, d.Digest, err, im.manifest.Digest)
				}
			}
			var idx ocispec.Index
			json.Unmarshal(raw, &idx)
			if idx.Annotations["org.example.index"] != "kept" || idx.Manifests[1].Annotations["org.example.kept"] != "linux/arm64/v8" {
				t.Errorf("the binding index lost the original's annotations: %+v", idx)
			}

			// Unbinding puts back the original index, byte for byte.
			origDigest := digest.Digest(idx.Annotations[artifact.AnnotationBoundFrom])
			if _, err := c.Delete(ctx, ref, true); err != nil {
				t.Fatal(err)
			}
			if d, err := reg.Resolve(ctx, ref); err != nil || d.Digest != origDigest {
				t.Fatalf("after delete --streaming-only the tag names %v (%v), want the original index %s", d.Digest, err, origDigest)
			}
		})
	}
}

// assertArtifact checks S against the contract: subject, type, annotations, config diff_ids,
// and for each layer: its decompressed prefix is the original tar (diff_id), the estargz
// reader accepts it, and its TOC lists every entry of the original.
func assertArtifact(t *testing.T, reg *remote.Registry, img *testImage, s ocispec.Descriptor, profile []string) {
	t.Helper()
	ctx := testCtx(t)
	repo := repoOf(img.ref)
	raw, err := reg.FetchManifest(ctx, repo+"@"+s.Digest.String(), s)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if m.ArtifactType != artifact.ArtifactType || m.Subject == nil || m.Subject.Digest != img.manifest.Digest || m.Subject.Size != img.manifest.Size {
		t.Fatalf("artifact type %q subject %+v", m.ArtifactType, m.Subject)
	}
	for k, v := range map[string]string{artifact.AnnotationFormat: artifact.FormatName, artifact.AnnotationVersion: artifact.FormatVersion, artifact.AnnotationPlatform: "linux/amd64"} {
		if m.Annotations[k] != v {
			t.Errorf("annotation %s=%q, want %q", k, m.Annotations[k], v)
		}
	}
	if profile != nil {
		got, err := artifact.DecodeProfile(m.Annotations[artifact.AnnotationPrefetch])
		if err != nil || !slices.Equal(got, profile) {
			t.Errorf("prefetch profile %v (%v), want %v", got, err, profile)
		}
	}
	cfgRaw, err := reg.FetchBlob(ctx, repo, m.Config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg ocispec.Image
	json.Unmarshal(cfgRaw, &cfg)
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || len(cfg.Config.Cmd) == 0 || len(cfg.RootFS.DiffIDs) != len(img.tars) {
		t.Fatalf("artifact config is not the image's with new diff_ids: %s", cfgRaw)
	}
	if len(m.Layers) != len(img.tars) {
		t.Fatalf("%d layers, the image %d", len(m.Layers), len(img.tars))
	}
	for i, l := range m.Layers {
		if l.Annotations[artifact.AnnotationOriginalDigest] != img.layers[i].Digest.String() || l.Annotations[artifact.AnnotationOriginalDiffID] != digest.FromBytes(img.tars[i]).String() {
			t.Errorf("layer %d annotations %v", i, l.Annotations)
		}
		blob := fetchBlob(t, reg, repo, l)
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		whole, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		if len(whole) < len(img.tars[i]) || digest.FromBytes(whole[:len(img.tars[i])]) != digest.FromBytes(img.tars[i]) {
			t.Errorf("layer %d: the decompressed prefix does not hash to the original diff_id", i)
		}
		if digest.FromBytes(whole) != cfg.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: config diff_id %s, layer decompresses to %s", i, cfg.RootFS.DiffIDs[i], digest.FromBytes(whole))
		}
		r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
		if err != nil {
			t.Fatalf("layer %d: the estargz reader refuses it: %v", i, err)
		}
		if r.TOCDigest().String() != l.Annotations[artifact.AnnotationTOCDigest] {
			t.Errorf("layer %d: TOC digest %s, annotated %s", i, r.TOCDigest(), l.Annotations[artifact.AnnotationTOCDigest])
		}
		// The TOC offset the layer is annotated with is the footer's: nodes read both at once.
		footerOffset, err := artifact.ParseFooter(blob[len(blob)-artifact.FooterSize:])
		if err != nil || artifact.TOCOffsetHint(l.Annotations, l.Size) != footerOffset {
			t.Errorf("layer %d: annotated with TOC offset %q, the footer records %d (%v)", i, l.Annotations[artifact.AnnotationTOCOffset], footerOffset, err)
		}
		for _, e := range tarNames(t, img.tars[i]) {
			if _, ok := r.Lookup(e); !ok {
				t.Errorf("layer %d: %s is not in the TOC", i, e)
			}
		}
	}
}

// tarNames lists the entry names of a tar, as the TOC names them.
func tarNames(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/"))
	}
}

// assertBinding checks the index at ref: the platform manifests (digests unchanged, in
// order), bindings by annotation, and every bound artifact listed under a platform no node
// selects.
func assertBinding(t *testing.T, reg *remote.Registry, ref string, bound map[digest.Digest]digest.Digest, manifests []digest.Digest) {
	t.Helper()
	var idx ocispec.Index
	if err := json.Unmarshal(fetchTag(t, reg, ref), &idx); err != nil {
		t.Fatal(err)
	}
	var gotManifests []digest.Digest
	listed := map[digest.Digest]bool{}
	for _, d := range idx.Manifests {
		if d.ArtifactType == artifact.ArtifactType {
			listed[d.Digest] = true
			if d.Platform == nil || d.Platform.OS != "unknown" {
				t.Errorf("artifact %s listed with platform %v", d.Digest, d.Platform)
			}
			continue
		}
		gotManifests = append(gotManifests, d.Digest)
		if want, got := bound[d.Digest], d.Annotations[artifact.AnnotationBinding]; want.String() != got && !(want == "" && got == "") {
			t.Errorf("manifest %s bound to %q, want %q", d.Digest, got, want)
		}
	}
	if !slices.Equal(gotManifests, manifests) {
		t.Errorf("binding index lists manifests %v, want %v", gotManifests, manifests)
	}
	for _, s := range bound {
		if !listed[s] {
			t.Errorf("binding index does not list the artifact %s", s)
		}
	}
	if len(listed) != len(bound) {
		t.Errorf("binding index lists %d artifacts, want %d", len(listed), len(bound))
	}
}

func assertReferrers(t *testing.T, reg *remote.Registry, img *testImage, want []digest.Digest) {
	t.Helper()
	ds, err := reg.Referrers(testCtx(t), repoOf(img.ref), img.manifest.Digest, artifact.ArtifactType)
	if err != nil {
		t.Fatal(err)
	}
	var got []digest.Digest
	for _, d := range ds {
		got = append(got, d.Digest)
	}
	if !slices.Equal(got, want) {
		t.Errorf("referrers of %s: %v, want %v", img.manifest.Digest, got, want)
	}
}

func assertGone(t *testing.T, reg *remote.Registry, repo string, ds ...digest.Digest) {
	t.Helper()
	for _, d := range ds {
		if _, err := reg.Resolve(testCtx(t), repo+"@"+d.String()); !errdefs.IsNotFound(err) {
			t.Errorf("%s is still in the registry (%v)", d, err)
		}
	}
}

func fetchTag(t testing.TB, reg *remote.Registry, ref string) []byte {
	t.Helper()
	ctx := testCtx(t)
	d, err := reg.Resolve(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := reg.FetchManifest(ctx, repoOf(ref)+"@"+d.Digest.String(), d)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func fetchBlob(t testing.TB, reg *remote.Registry, repo string, d ocispec.Descriptor) []byte {
	t.Helper()
	br, err := reg.BlobReader(testCtx(t), repo, d)
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	b := make([]byte, d.Size)
	if _, err := br.ReadAtContext(context.Background(), b, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

// repoOf is host/repo of host/repo:tag.
func repoOf(ref string) string {
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i]
	}
	return ref
}
