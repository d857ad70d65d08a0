package containerdconf

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

var opts = Options{Address: "/run/rill/rill.sock", Platform: "linux/amd64"}

func TestMergeKeepsTheRestOfTheFile(t *testing.T) {
	for _, tc := range []struct {
		file string
		// want: lines the merged file must hold (rill's entries, edited in place).
		want []string
		// replaced: lines of the original that the merge changes.
		replaced []string
	}{
		{"v3-default.toml", []string{
			`    snapshotter = "rill" # the node's default`,
			`[proxy_plugins.rill]`,
			`  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]`[2:],
			`  snapshotter = "overlayfs"`,
			`  snapshotter = "rill"`,
		}, []string{`    snapshotter = 'overlayfs' # the node's default`}},
		{"v2-1.7.toml", []string{
			`    snapshotter = "rill"`,
			`    disable_snapshot_annotations = false`,
		}, []string{`    snapshotter = "overlayfs"`}},
		{"v3-dotted.toml", []string{
			`'io.containerd.cri.v1.images'.snapshotter = "rill"`,
			`address = "/run/rill/rill.sock"`,
			`[proxy_plugins.rill.exports]`,
			`  enable_remote_snapshot_annotations = "true"`,
		}, []string{`'io.containerd.cri.v1.images'.snapshotter = "overlayfs"`, `address = "/old/rill.sock"`}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			orig, err := os.ReadFile("testdata/" + tc.file)
			if err != nil {
				t.Fatal(err)
			}
			merged, changes, err := Merge(orig, opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) == 0 {
				t.Fatal("no changes reported")
			}
			if err := Verify(merged, opts); err != nil {
				t.Fatalf("merged file: %v\n%s", err, merged)
			}
			out := strings.Split(string(merged), "\n")
			for _, w := range tc.want {
				if !containsLine(out, w) {
					t.Errorf("merged file lacks %q:\n%s", w, merged)
				}
			}
			// Every other line of the original, comments included, is still there, in order.
			j := 0
			for _, l := range strings.Split(string(orig), "\n") {
				if contains(tc.replaced, l) {
					continue
				}
				for j < len(out) && out[j] != l {
					j++
				}
				if j == len(out) {
					t.Fatalf("line %q of the original is lost or moved:\n%s", l, merged)
				}
			}
			// Every setting that is not rill's keeps its value.
			before, _ := Parse(orig)
			after, _ := Parse(merged)
			for _, s := range Wanted(Version(before), opts) {
				deleteAt(before, append(s.Table, s.Key))
				deleteAt(after, append(s.Table, s.Key))
			}
			deleteAt(after, []string{"plugins", TransferV3, "unpack_config"})
			prune(before)
			prune(after)
			if !reflect.DeepEqual(before, after) {
				t.Errorf("other settings changed:\nbefore %v\nafter  %v", before, after)
			}
			// A second run changes nothing.
			again, changes, err := Merge(merged, opts)
			if err != nil || len(changes) != 0 || string(again) != string(merged) {
				t.Errorf("second merge: changes %v, err %v", changes, err)
			}
		})
	}
}

func TestMergeNewFile(t *testing.T) {
	for _, v := range []int{2, 3} {
		o := opts
		o.Version = v
		merged, _, err := Merge(nil, o)
		if err != nil {
			t.Fatal(err)
		}
		doc, _ := Parse(merged)
		if Version(doc) != v {
			t.Errorf("version %d file: %s", v, merged)
		}
		if err := Verify(merged, o); err != nil {
			t.Errorf("version %d: %v\n%s", v, err, merged)
		}
	}
}

func TestMergeKeepsExistingUnpackEntries(t *testing.T) {
	src := "version = 3\n[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]\n  platform = \"linux/amd64\"\n  snapshotter = \"erofs\"\n  differ = \"erofs\"\n"
	merged, _, err := Merge([]byte(src), opts)
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := Parse(merged)
	var snaps []any
	for _, e := range UnpackEntries(doc) {
		snaps = append(snaps, e["snapshotter"])
	}
	if !reflect.DeepEqual(snaps, []any{"erofs", "rill"}) {
		t.Errorf("unpack entries %v, want the operator's erofs entry then rill's:\n%s", snaps, merged)
	}
}

func TestMergeRefusesWhatItCannotEdit(t *testing.T) {
	inline, err := os.ReadFile("testdata/v3-inline.toml")
	if err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{
		"inline table":        string(inline),
		"no version":          "root = \"/var/lib/containerd\"\n",
		"inline unpack array": "version = 3\n[plugins.'io.containerd.transfer.v1.local']\n  unpack_config = [{platform = \"linux/amd64\", snapshotter = \"overlayfs\"}]\n",
		"multi-line value":    "version = 3\n[proxy_plugins.rill]\n  address = \"\"\"\n/x\"\"\"\n",
	} {
		_, _, err := Merge([]byte(src), opts)
		if !errors.Is(err, ErrManual) {
			t.Errorf("%s: err %v, want ErrManual", name, err)
		}
	}
	if _, _, err := Merge([]byte("version = 3\n[broken"), opts); err == nil {
		t.Error("a file that does not parse: no error")
	}
}

func FuzzMerge(f *testing.F) {
	for _, name := range []string{"v3-default.toml", "v2-1.7.toml", "v3-dotted.toml", "v3-inline.toml"} {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		merged, changes, err := Merge(src, opts)
		if err != nil {
			return
		}
		if err := Verify(merged, opts); err != nil {
			t.Fatalf("merge returned a file without rill's entries: %v", err)
		}
		if _, again, err := Merge(merged, opts); err != nil || len(again) != 0 {
			t.Fatalf("not idempotent: %v %v (first changes %v)", again, err, changes)
		}
	})
}

func containsLine(lines []string, l string) bool { return contains(lines, l) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func deleteAt(doc map[string]any, path []string) {
	m := doc
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			return
		}
		m = next
	}
	delete(m, path[len(path)-1])
}

// prune drops empty tables (those that held only rill's keys).
func prune(m map[string]any) bool {
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok && prune(sub) {
			delete(m, k)
		}
	}
	return len(m) == 0
}
