package manifest

import (
	"archive/tar"
	"bytes"
	"strings"
	"testing"
	"time"
)

type member struct {
	typ     byte
	name    string
	content string
	link    string
	mode    int64
}

func layer(t *testing.T, members ...member) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		mode := m.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Typeflag: m.typ, Name: m.name, Linkname: m.link, Mode: mode,
			Size: int64(len(m.content)), ModTime: time.Unix(1, 0), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(m.content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func paths(t *testing.T, tree *Tree) string {
	t.Helper()
	entries, err := tree.Entries("/x")
	if err != nil {
		t.Fatal(err)
	}
	var ps []string
	for _, line := range Lines(entries) {
		p, _, _ := strings.Cut(line, " ")
		if strings.Contains(line, "links=") {
			p += "(linked)"
		}
		ps = append(ps, p)
	}
	return strings.Join(ps, " ")
}

func TestTreeAppliesWhiteoutsOpaqueDirsAndReplacements(t *testing.T) {
	tree := NewTree()
	lower := layer(t,
		member{typ: tar.TypeDir, name: "x/", mode: 0o755},
		member{typ: tar.TypeReg, name: "x/keep", content: "k"},
		member{typ: tar.TypeReg, name: "x/gone", content: "g"},
		member{typ: tar.TypeLink, name: "x/keep-link", link: "x/keep"},
		member{typ: tar.TypeDir, name: "x/opq/", mode: 0o755},
		member{typ: tar.TypeReg, name: "x/opq/old", content: "o"},
		member{typ: tar.TypeDir, name: "x/dir/", mode: 0o755},
		member{typ: tar.TypeReg, name: "x/dir/child", content: "c"},
	)
	upper := layer(t,
		member{typ: tar.TypeReg, name: "x/new", content: "n"}, // before the whiteouts: order must not matter
		member{typ: tar.TypeReg, name: "x/.wh.gone"},
		member{typ: tar.TypeReg, name: "x/opq/.wh..wh..opq"},
		member{typ: tar.TypeReg, name: "x/opq/fresh", content: "f"},
		member{typ: tar.TypeReg, name: "x/dir", content: "now a file"},
		member{typ: tar.TypeReg, name: "y/implied/parent", content: "p"},
	)
	for _, l := range []*bytes.Buffer{lower, upper} {
		if err := tree.ApplyLayer(l); err != nil {
			t.Fatal(err)
		}
	}
	want := `"/x" "/x/dir" "/x/keep"(linked) "/x/keep-link"(linked) "/x/new" "/x/opq" "/x/opq/fresh"`
	if got := paths(t, tree); got != want {
		t.Errorf("paths:\n got %s\nwant %s", got, want)
	}
	entries, err := tree.Entries("/y")
	if err != nil {
		t.Fatal(err)
	}
	if got := Lines(entries)[0]; got != `"/y" dir mode=0755 uid=0 gid=0` {
		t.Errorf("implied parent: %s", got)
	}
}

func TestDiffNamesMissingAndExtraLines(t *testing.T) {
	got := Diff("a\nb\nc\n", "a\nc\nd\n", 10)
	if got != "- b\n+ d\n" {
		t.Errorf("Diff = %q", got)
	}
	if Diff("a\n", "a\n", 10) != "" {
		t.Error("Diff of equal texts is not empty")
	}
}
