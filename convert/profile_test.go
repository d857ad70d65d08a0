package convert

import (
	"fmt"
	"slices"
	"strings"
	"testing"

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
