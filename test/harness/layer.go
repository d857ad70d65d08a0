package harness

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Layer is a gzip-compressed tar layer stored in a file. It implements go-containerregistry's
// v1.Layer with the digests computed once, when it was written.
type Layer struct {
	Path   string  `json:"-"`
	Digest v1.Hash `json:"digest"`
	DiffID v1.Hash `json:"diffID"`
	Size   int64   `json:"size"`
	// Annotations of the layer's descriptor in the manifest (an eStargz layer's TOC digest).
	Annotations map[string]string `json:"annotations,omitempty"`
}

var _ v1.Layer = layerAdapter{}

// V1 returns l as a go-containerregistry layer.
func (l *Layer) V1() v1.Layer { return layerAdapter{l} }

// Uncompressed opens the layer's tar stream.
func (l *Layer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.Path)
	if err != nil {
		return nil, fmt.Errorf("opening layer %s: %w", l.Path, err)
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading the gzip header of layer %s: %w", l.Path, err)
	}
	return readCloser{Reader: zr, close: func() error { zr.Close(); return f.Close() }}, nil
}

// SaveJSON records l's digests and size in file, for LoadLayer.
func (l *Layer) SaveJSON(file string) error {
	data, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("encoding layer metadata: %w", err)
	}
	return os.WriteFile(file, data, 0o644)
}

// LoadLayer returns the layer stored in blob, whose digests SaveJSON recorded in file. It
// fails unless blob still has the recorded size and digest.
func LoadLayer(file, blob string) (*Layer, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading layer metadata: %w", err)
	}
	var l Layer
	if err := json.Unmarshal(data, &l); err != nil {
		return nil, fmt.Errorf("decoding layer metadata %s: %w", file, err)
	}
	st, err := os.Stat(blob)
	if err != nil {
		return nil, fmt.Errorf("layer blob of %s: %w", file, err)
	}
	if st.Size() != l.Size {
		return nil, fmt.Errorf("layer blob %s has %d bytes, its metadata says %d", blob, st.Size(), l.Size)
	}
	f, err := os.Open(blob)
	if err != nil {
		return nil, fmt.Errorf("opening layer blob: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("reading layer blob %s: %w", blob, err)
	}
	if got := fmt.Sprintf("%x", h.Sum(nil)); got != l.Digest.Hex {
		return nil, fmt.Errorf("layer blob %s has digest sha256:%s, its metadata says %s", blob, got, l.Digest)
	}
	l.Path = blob
	return &l, nil
}

type layerAdapter struct{ l *Layer }

func (a layerAdapter) Digest() (v1.Hash, error) { return a.l.Digest, nil }
func (a layerAdapter) DiffID() (v1.Hash, error) { return a.l.DiffID, nil }
func (a layerAdapter) Size() (int64, error)     { return a.l.Size, nil }
func (a layerAdapter) MediaType() (types.MediaType, error) {
	return types.OCILayer, nil
}
func (a layerAdapter) Compressed() (io.ReadCloser, error) {
	f, err := os.Open(a.l.Path)
	if err != nil {
		return nil, fmt.Errorf("opening layer %s: %w", a.l.Path, err)
	}
	return f, nil
}
func (a layerAdapter) Uncompressed() (io.ReadCloser, error) { return a.l.Uncompressed() }

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

// LayerWriter writes a tar layer, gzip-compressed, to a file, hashing both streams as it goes.
type LayerWriter struct {
	path         string
	file         *os.File
	compressed   *countingHash
	uncompressed hash.Hash
	gz           *gzip.Writer
	tw           *tar.Writer
}

// NewLayerWriter creates the layer file at path, compressed at the gzip level given.
func NewLayerWriter(path string, level int) (*LayerWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("creating layer file: %w", err)
	}
	w := &LayerWriter{path: path, file: f, compressed: &countingHash{Hash: sha256.New()}, uncompressed: sha256.New()}
	w.gz, err = gzip.NewWriterLevel(io.MultiWriter(f, w.compressed), level)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("gzip level %d: %w", level, err)
	}
	w.tw = tar.NewWriter(io.MultiWriter(w.gz, w.uncompressed))
	return w, nil
}

// Add writes one member; content is read for regular files (hdr.Size bytes) and may be nil
// otherwise.
func (w *LayerWriter) Add(hdr *tar.Header, content io.Reader) error {
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing the tar header of %s: %w", hdr.Name, err)
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		n, err := io.Copy(w.tw, content)
		if err != nil {
			return fmt.Errorf("writing the content of %s: %w", hdr.Name, err)
		}
		if n != hdr.Size {
			return fmt.Errorf("content of %s: got %d bytes, the header says %d", hdr.Name, n, hdr.Size)
		}
	}
	return nil
}

// Close finishes the layer and returns it.
func (w *LayerWriter) Close() (*Layer, error) {
	defer w.file.Close()
	if err := w.tw.Close(); err != nil {
		return nil, fmt.Errorf("finishing the tar stream of %s: %w", w.path, err)
	}
	if err := w.gz.Close(); err != nil {
		return nil, fmt.Errorf("finishing the gzip stream of %s: %w", w.path, err)
	}
	if err := w.file.Close(); err != nil {
		return nil, fmt.Errorf("closing %s: %w", w.path, err)
	}
	return &Layer{
		Path:   w.path,
		Digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", w.compressed.Sum(nil))},
		DiffID: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", w.uncompressed.Sum(nil))},
		Size:   w.compressed.n,
	}, nil
}

type countingHash struct {
	hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.Hash.Write(p)
}
