package artifact

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"
)

func TestParseProfile(t *testing.T) {
	want := []string{"usr/bin/python3", "usr/lib/libpython3.so", "app/main.py"}
	cases := []struct {
		name, input string
		want        []string
		wantErr     bool
	}{
		{"one path a line, comments and blanks skipped", "# start-up\n/usr/bin/python3\n\nusr/lib/libpython3.so\n./app/main.py\n", want, false},
		{"JSON array", `["/usr/bin/python3","usr/lib/libpython3.so","app/main.py"]`, want, false},
		{"node-side JSON object", `{"paths":["usr/bin/python3","/usr/lib/libpython3.so","app//main.py"]}`, want, false},
		{"duplicates keep their first position", "usr/bin/python3\nusr/lib/libpython3.so\nusr/bin/python3\napp/main.py\n", want, false},
		{"paths under directories that have no entries of their own are kept", "opt/app/bin/server\n", []string{"opt/app/bin/server"}, false},
		{"a path leaving the root", "usr/../../etc/shadow\n", nil, true},
		{"nothing in it", "# empty\n", nil, true},
		{"broken JSON", `["usr/bin`, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseProfile(strings.NewReader(c.input))
			if (err != nil) != c.wantErr || !slices.Equal(got, c.want) {
				t.Fatalf("ParseProfile = %q, %v; want %q (error: %v)", got, err, c.want, c.wantErr)
			}
		})
	}
}

func TestProfileRoundTrip(t *testing.T) {
	paths := []string{"usr/bin/python3", "ünïcødé/файл", "name with\nnewline"}
	enc, kept, err := EncodeProfile(paths)
	if err != nil || kept != len(paths) {
		t.Fatal(kept, err)
	}
	got, err := DecodeProfile(enc)
	if err != nil || !slices.Equal(got, paths) {
		t.Fatalf("round trip: %q %v", got, err)
	}
}

// A profile too large for a manifest keeps its beginning (the files needed first).
func TestEncodeProfileCutsTheEnd(t *testing.T) {
	var paths []string
	for i := range 30_000 { // hex names compress little: well over the limit
		paths = append(paths, fmt.Sprintf("usr/share/blobs/%06d/%s", i, digest.FromString(fmt.Sprint(i)).Encoded()))
	}
	enc, kept, err := EncodeProfile(paths)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) > MaxProfileSize || kept >= len(paths) || kept < len(paths)/10 {
		t.Fatalf("encoded %d bytes keeping %d of %d paths", len(enc), kept, len(paths))
	}
	got, err := DecodeProfile(enc)
	if err != nil || !slices.Equal(got, paths[:kept]) {
		t.Fatalf("decoded %d paths (%v), want the first %d", len(got), err, kept)
	}
}

// encodeJSON gzips and base64-encodes js as an AnnotationPrefetch value, whatever it holds.
func encodeJSON(t testing.TB, js string) string {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write([]byte(js)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

// A profile that inflates beyond the bound is refused, not read into memory.
func TestDecodeProfileRefusesAGzipBomb(t *testing.T) {
	bomb := encodeJSON(t, `["`+strings.Repeat("a", maxDecodedProfileSize)+`"]`)
	if len(bomb) > MaxProfileSize/4 {
		t.Fatalf("the bomb is %d bytes encoded", len(bomb))
	}
	if paths, err := DecodeProfile(bomb); err == nil {
		t.Fatalf("decoded %d paths from a %d-byte annotation", len(paths), len(bomb))
	}
}

// A profile that compresses very well is cut so that it decodes within the bound.
func TestEncodeProfileKeepsTheDecodedSizeBounded(t *testing.T) {
	long := "usr/share/" + strings.Repeat("x", 4000) + "/"
	var paths []string
	for i := range 5000 { // 20 MB of JSON that gzip squeezes far below MaxProfileSize
		paths = append(paths, fmt.Sprintf("%s%06d", long, i))
	}
	enc, kept, err := EncodeProfile(paths)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeProfile(enc)
	if err != nil || kept == 0 || kept >= len(paths) || !slices.Equal(got, paths[:kept]) {
		t.Fatalf("kept %d of %d paths, decoded %d (%v)", kept, len(paths), len(got), err)
	}
}

// Paths JSON cannot carry unchanged are refused rather than silently rewritten.
func TestProfileRefusesPathsThatAreNotUTF8(t *testing.T) {
	if _, err := ParseProfile(strings.NewReader("usr/bin/ok\nusr/lib/\xff\xfe\n")); err == nil {
		t.Error("ParseProfile accepted a path that is not UTF-8")
	}
	if _, _, err := EncodeProfile([]string{"usr/bin/ok", "usr/lib/\xff"}); err == nil {
		t.Error("EncodeProfile accepted a path that is not UTF-8")
	}
}

// reencodes checks that paths, as DecodeProfile or ParseProfile returned them, encode and
// decode back to themselves (their beginning when the encoding had to cut them).
func reencodes(t *testing.T, paths []string) {
	t.Helper()
	enc, kept, err := EncodeProfile(paths)
	if err != nil {
		if len(paths) > 0 {
			if _, _, err1 := EncodeProfile(paths[:1]); err1 != nil {
				return // a single path too large for an annotation
			}
		}
		t.Fatalf("EncodeProfile(%d paths): %v", len(paths), err)
	}
	if kept > len(paths) || (kept < len(paths) && len(enc) < MaxProfileSize/2) {
		t.Fatalf("kept %d of %d paths in %d bytes", kept, len(paths), len(enc))
	}
	got, err := DecodeProfile(enc)
	if err != nil {
		t.Fatalf("DecodeProfile(EncodeProfile(%q)): %v", paths, err)
	}
	if !slices.Equal(got, paths[:kept]) {
		t.Fatalf("re-encoded %q, decoded %q", paths[:kept], got)
	}
}

func FuzzDecodeProfile(f *testing.F) {
	for _, js := range []string{
		`["usr/bin/python3","usr/lib/libpython3.so","app/main.py"]`,
		`[]`, `null`, `[null]`, `[""]`, `{"paths":["a"]}`, `"a"`, `[1]`,
		`["ünïcødé/файл","name with\nnewline","\u2028","\ud800","a\u0000b"]`,
		"[\"raw \xff\xfe bytes\"]",
		`["a"] trailing`,
	} {
		f.Add(encodeJSON(f, js))
	}
	enc, _, err := EncodeProfile([]string{"usr/bin/sh", "etc/passwd"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(enc)
	f.Add(enc + enc)                   // two gzip members' worth of base64, misaligned
	f.Add(strings.TrimRight(enc, "=")) // padding dropped
	f.Add("")
	f.Add("not base64!")
	f.Add(base64.StdEncoding.EncodeToString([]byte("not gzip")))
	f.Fuzz(func(t *testing.T, encoded string) {
		paths, err := DecodeProfile(encoded)
		if err != nil {
			return
		}
		reencodes(t, paths)
	})
}

func FuzzParseProfile(f *testing.F) {
	for _, s := range []string{
		"# start-up\n/usr/bin/python3\n\nusr/lib/libpython3.so\n./app/main.py\n",
		`["/usr/bin/python3","usr/lib/libpython3.so","app/main.py"]`,
		`{"paths":["usr/bin/python3","/usr/lib/libpython3.so","app//main.py"]}`,
		"usr/bin/python3\nusr/bin/python3\n",
		"usr/../../etc/shadow\n",
		"a/./b\n/a/b/\n//a//b\n",
		"# empty\n", "", "/\n.\n./\n",
		`["usr/bin`, `{"paths":null}`, `[null,"a"]`, `{"paths":["a"],"paths":["b"]}`,
		"\xff\xfe\n", "a\x00b\n", "  spaced  \r\n\ttabbed\n",
		"[not json\n", "#!/bin/sh\n", `["..."]`, `["a\nb"]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		paths, err := ParseProfile(bytes.NewReader(b))
		if err != nil {
			return
		}
		if len(paths) == 0 {
			t.Fatal("no paths and no error")
		}
		seen := make(map[string]bool)
		for _, p := range paths {
			if p == "" || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "." || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
				t.Fatalf("path %q is not relative and clean", p)
			}
			for _, c := range strings.Split(p, "/") {
				if c == ".." {
					t.Fatalf("path %q leaves the root", p)
				}
			}
			if seen[p] {
				t.Fatalf("path %q listed twice", p)
			}
			seen[p] = true
		}
		// Parsing is idempotent through the JSON array form.
		js, err := json.Marshal(paths)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseProfile(bytes.NewReader(js))
		if err != nil || !slices.Equal(again, paths) {
			t.Fatalf("parsed %q, then %q from its JSON (%v)", paths, again, err)
		}
		reencodes(t, paths)
	})
}
