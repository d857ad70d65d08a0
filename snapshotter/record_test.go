package snapshotter

import (
	"testing"

	rillfs "github.com/rillstream/rill/fs"
)

// Profiles leave out only big files of which the start read a small part.
func TestSparselyReadFilesAreLeftOutOfProfiles(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name string
		a    rillfs.Access
		want bool
	}{
		{"small file, read a little", rillfs.Access{Size: 4 * mib, Read: 4096}, false},
		{"big file, read in a few places", rillfs.Access{Size: 64 * mib, Read: 2 * mib}, true},
		{"big file, read a good part", rillfs.Access{Size: 64 * mib, Read: 16 * mib}, false},
		{"big file, opened but not read", rillfs.Access{Size: 64 * mib}, true},
		{"big file read by the kernel directly", rillfs.Access{Size: 64 * mib, Unmetered: true}, false},
	} {
		if got := sparselyRead(c.a); got != c.want {
			t.Errorf("%s: left out %v, want %v", c.name, got, c.want)
		}
	}
}
