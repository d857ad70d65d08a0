package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The registry-side CLI runs on machines that never mount a layer: it must not link FUSE,
// the metastore or containerd's overlay snapshotter (docs/architecture.md).
func TestCLILinksNoNodeSide(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/hanwen/go-fuse", "go.etcd.io/bbolt", "github.com/containerd/containerd/v2/plugins/snapshots/overlay", "github.com/rillstream/rill/fs"} {
			if pkg == banned || strings.HasPrefix(pkg, banned+"/") {
				t.Errorf("rill links %s", pkg)
			}
		}
	}
}
