package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/rillstream/rill/test/harness"
)

// usageSlack is how far above its baseline rill's disk usage may stay once an image is gone
// (directory blocks do not shrink); the fixture alone is hundreds of MB.
const usageSlack = 1 << 20

// assertUnpackedByRill checks that containerd unpacked the image into rill: after an unpack,
// containerd labels the image config blob with the top layer's snapshot, per snapshotter.
func assertUnpackedByRill(t *testing.T, env *harness.Env, img pushedImage) {
	t.Helper()
	labels, err := env.Containerd.ContentLabels(t.Context(), harness.CRINamespace, img.ConfigDigest.String())
	if err != nil {
		t.Fatal(err)
	}
	top := img.ChainIDs[len(img.ChainIDs)-1].String()
	key := "containerd.io/gc.ref.snapshot." + harness.SnapshotterName
	if got := labels[key]; got != top {
		t.Errorf("image config %s: label %s = %q, want the top chain ID %s (all labels: %v)",
			img.ConfigDigest, key, got, top, labels)
	}
	for k := range labels {
		if strings.HasPrefix(k, "containerd.io/gc.ref.snapshot.") && k != key {
			t.Errorf("image config %s was also unpacked by another snapshotter: %s=%s", img.ConfigDigest, k, labels[k])
		}
	}
}

// assertSnapshotsInRill asks rill itself for its snapshots and checks that each of the image's
// layers is a committed snapshot named after its chain ID, whose parent is the layer below.
// It returns a description of every snapshot rill holds, to compare across a restart.
func assertSnapshotsInRill(t *testing.T, env *harness.Env, img pushedImage) []string {
	t.Helper()
	infos, err := env.Snapshotter.Snapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	byChain := map[string]snapshots.Info{}
	var all []string
	for _, info := range infos {
		byChain[chainOf(info.Name)] = info
		all = append(all, fmt.Sprintf("%s kind=%s parent=%s", info.Name, info.Kind, info.Parent))
	}
	slices.Sort(all)
	for i, chain := range img.ChainIDs {
		info, ok := byChain[chain.String()]
		if !ok {
			t.Errorf("layer %d of %s: no snapshot for chain ID %s in rill's metastore; rill holds:\n%s",
				i, img.Ref, chain, strings.Join(all, "\n"))
			continue
		}
		if info.Kind != snapshots.KindCommitted {
			t.Errorf("snapshot %s is %s, want committed", info.Name, info.Kind)
		}
		wantParent := ""
		if i > 0 {
			wantParent = img.ChainIDs[i-1].String()
		}
		if got := chainOf(info.Parent); got != wantParent {
			t.Errorf("snapshot %s has parent %q, want the chain ID of the layer below (%q)", info.Name, info.Parent, wantParent)
		}
	}
	return all
}

// chainOf returns the snapshot name containerd gave a backend key ("<ns>/<id>/<name>").
func chainOf(key string) string {
	if i := strings.LastIndex(key, "/"); i >= 0 {
		return key[i+1:]
	}
	return key
}

// assertSnapshotsGone waits until rill holds no snapshot of the image's layers.
func assertSnapshotsGone(t *testing.T, env *harness.Env, img pushedImage) {
	t.Helper()
	chains := map[string]bool{}
	for _, c := range img.ChainIDs {
		chains[c.String()] = true
	}
	var left []string
	deadline := time.Now().Add(time.Minute)
	for {
		infos, err := env.Snapshotter.Snapshots(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		left = left[:0]
		for _, info := range infos {
			if chains[chainOf(info.Name)] {
				left = append(left, info.Name)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("a minute after the image was removed, rill still holds its snapshots: %v", left)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// assertDiskUsageBack waits until the disk usage of rill's snapshots is back near baseline.
func assertDiskUsageBack(t *testing.T, env *harness.Env, baseline int64, timeout time.Duration) {
	t.Helper()
	began := time.Now()
	for {
		usage, err := env.Snapshotter.DiskUsage()
		if err != nil {
			t.Fatal(err)
		}
		if usage <= baseline+usageSlack {
			t.Logf("rill's snapshots use %s again (baseline %s) %s after the removal",
				describeUsage(usage), describeUsage(baseline), time.Since(began).Round(time.Millisecond))
			return
		}
		if time.Since(began) > timeout {
			t.Errorf("%s after the image was removed, rill's snapshots still use %s (baseline before the pull: %s)",
				timeout, describeUsage(usage), describeUsage(baseline))
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}
