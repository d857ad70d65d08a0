package artifact

import (
	"archive/tar"
	"bytes"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/rillstream/rill/internal/testlayer"
)

// Extension fields keep what JSON and estargz's modtime cannot: the bytes of names and
// targets that are not UTF-8, nanoseconds; and the node's reading of them is containerd's.
func TestExtensionFieldsRoundTrip(t *testing.T) {
	nano := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	headers := []*tar.Header{
		{Typeflag: tar.TypeReg, Name: "caf\xe9", ModTime: nano},
		{Typeflag: tar.TypeSymlink, Name: "link", Linkname: "caf\xe9", ModTime: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	toc := &estargz.JTOC{Version: 1, Entries: []*estargz.TOCEntry{
		{Name: headers[0].Name, Type: "reg"}, {Name: headers[1].Name, Type: "symlink", LinkName: headers[1].Linkname},
	}}
	ext, err := Extend(toc, headers)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tocJSON, err := WriteTOCAndFooter(&buf, 0, ext, 6, nil)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeTOC(tocJSON)
	if err != nil {
		t.Fatal(err)
	}
	if got := back.Entries[0].RawName(); got != "caf\xe9" {
		t.Errorf("name %q, want the tar's bytes", got)
	}
	if back.Entries[0].Name == "caf\xe9" {
		t.Error("the estargz name field cannot hold the bytes; the test does not test the extension")
	}
	if got := back.Entries[1].RawLinkName(); got != "caf\xe9" {
		t.Errorf("link target %q", got)
	}
	if got := back.Entries[0].ModTime(); !got.Equal(nano) {
		t.Errorf("mtime %v, want %v", got, nano)
	}
	if got := back.Entries[1].ModTime(); !got.Equal(time.Unix(0, 0)) {
		t.Errorf("a pre-1970 mtime reads %v, want the epoch as containerd sets it", got)
	}
	// estargz's reader ignores the extension fields.
	if _, err := DecodeTOC([]byte(`{"version":1,"entries":[{"name":"a","type":"dir","rillFuture":1}]}`)); err != nil {
		t.Fatal(err)
	}
}

// Whatever the tar stream, TreeFromTar and CheckHeaders never panic, and a converted layer's
// own TOC always matches its tar.
func FuzzTreeFromTar(f *testing.F) {
	for _, entries := range [][]testlayer.Entry{testlayer.EveryKind(), testlayer.RootfsQuirks(), nil} {
		b, err := testlayer.Tar(entries, 0)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, tarBytes []byte) {
		tree, err := TreeFromTar(bytes.NewReader(tarBytes))
		if err == nil {
			if err := CompareMetadata(tree, tree); err != nil {
				t.Fatalf("a tree differs from itself: %v", err)
			}
		}
		_ = CheckHeaders(&JTOC{}, bytes.NewReader(tarBytes))
	})
}
