package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/rillstream/rill/internal/testlayer"
)

// rawLayer is a gzip layer given as its bytes, with the diff_id its image config names: it
// lets a test push a layer whose content does not decompress to it.
type rawLayer struct {
	blob   []byte
	diffID v1.Hash
}

func (l rawLayer) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(l.blob))
	return h, err
}
func (l rawLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l rawLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l rawLayer) Uncompressed() (io.ReadCloser, error) { return nil, fmt.Errorf("not needed") }
func (l rawLayer) Size() (int64, error)                 { return int64(len(l.blob)), nil }
func (l rawLayer) MediaType() (types.MediaType, error)  { return types.DockerLayer, nil }

// pushTarLayers pushes a linux/amd64 image at ref whose layers are the given tars,
// gzip-compressed and then cut to keep[i] bytes when keep[i] > 0.
func pushTarLayers(t *testing.T, ref string, tars [][]byte, keep []int) {
	t.Helper()
	img := empty.Image
	for i, tb := range tars {
		blob := testlayer.Gzip(tb)
		if i < len(keep) && keep[i] > 0 {
			blob = blob[:keep[i]]
		}
		sum := sha256.Sum256(tb)
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: rawLayer{blob: blob, diffID: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sum)}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
}

func tarOf(t *testing.T, entries []testlayer.Entry) []byte {
	t.Helper()
	b, err := testlayer.Tar(entries, 0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A layer whose gzip stream is cut short is corrupt content: exit 9, as the README says.
func TestCreateTruncatedLayerIsCorrupt(t *testing.T) {
	host := startRegistry(t, nil)
	ref := host + "/truncated:v1"
	full := tarOf(t, testlayer.EveryKind())
	pushTarLayers(t, ref, [][]byte{full}, []int{len(testlayer.Gzip(full)) / 2})
	flags := []string{"--plain-http", "--hosts-dir", t.TempDir(), "--docker-config", t.TempDir() + "/none.json"}
	code, out, errOut := rill(t, append([]string{"create", ref}, flags...)...)
	if code != exitCorrupt || !strings.Contains(errOut, "corrupt") {
		t.Fatalf("create of a truncated layer: exit %d, want %d (corrupt content)\nstdout: %s\nstderr: %s", code, exitCorrupt, out, errOut)
	}
}

// A layer no node would stream is not converted: rill create exits 12 naming the layer's
// entry, and binds nothing.
func TestCreateRefusesLayersNodesWouldNotStream(t *testing.T) {
	host := startRegistry(t, nil)
	flags := []string{"--plain-http", "--hosts-dir", t.TempDir(), "--docker-config", t.TempDir() + "/none.json"}
	cases := []struct {
		name    string
		entries []testlayer.Entry
		say     string
	}{
		{"escapes with ..", []testlayer.Entry{testlayer.Reg("../../etc/x", []byte("x"), 0o644)}, `"../../etc/x" escapes the layer`},
		{"absolute name", []testlayer.Entry{testlayer.Reg("/etc/abs", []byte("x"), 0o644)}, `"/etc/abs" is absolute`},
		{"through a symlinked parent", []testlayer.Entry{testlayer.Symlink("link", "/etc"), testlayer.Reg("link/x", []byte("x"), 0o644)}, "link/x: parent link is not a directory"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ref := fmt.Sprintf("%s/refused%d:v1", host, i)
			pushTarLayers(t, ref, [][]byte{tarOf(t, testlayer.EveryKind()), tarOf(t, c.entries)}, nil)
			code, out, errOut := rill(t, append([]string{"create", ref}, flags...)...)
			if code != exitUnstreamable || !strings.Contains(errOut, c.say) || !strings.Contains(errOut, "layer 2/2") {
				t.Fatalf("create: exit %d, want %d naming the entry (%q) and the layer\nstdout: %s\nstderr: %s", code, exitUnstreamable, c.say, out, errOut)
			}
			if code, out, _ := rill(t, append([]string{"show", ref}, flags...)...); code != exitOK || !strings.Contains(out, "not bound") || !strings.Contains(out, "no artifact") {
				t.Fatalf("show after a refused create: exit %d, want no artifact and nothing bound\n%s", code, out)
			}
		})
	}
	// The layers containerd extracts in its own way, that nodes stream the same way, convert.
	ref := host + "/quirks:v1"
	pushTarLayers(t, ref, [][]byte{tarOf(t, testlayer.RootfsQuirks())}, nil)
	if code, out, errOut := rill(t, append([]string{"create", ref}, flags...)...); code != exitOK {
		t.Fatalf("create of duplicates, ./ and names that are not UTF-8: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if code, out, errOut := rill(t, append([]string{"verify", ref}, flags...)...); code != exitOK {
		t.Fatalf("verify: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}
