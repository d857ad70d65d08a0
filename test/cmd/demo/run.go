package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
	"github.com/rillstream/rill/test/manifest"
)

// run walks through the demo; whatever happens, it stops everything it started.
func run(ctx context.Context, p *printer) error {
	began := time.Now()
	if err := runBasics(ctx, p); err != nil {
		return err
	}
	repoRoot, err := harness.RepoRoot(ctx)
	if err != nil {
		return err
	}
	err = runStreaming(ctx, p, repoRoot)
	p.Done()
	if err == nil {
		fmt.Fprintf(p.w, "\ndemo finished in %s: an image pulled into rill ran and saw exactly its layers' files; a realistic one streamed\n",
			time.Since(began).Round(time.Millisecond))
	}
	return err
}

// runBasics is the demo's first part: a small image pulled into rill in full (no streaming
// artifact), run, and removed.
func runBasics(ctx context.Context, p *printer) (err error) {
	p.Step("Starting a registry, rill-snapshotter and a private containerd (CRI snapshotter %q)", harness.SnapshotterName)
	env, err := harness.Start(ctx, harness.Options{Logf: p.Detail})
	if err != nil {
		return err
	}
	defer func() {
		p.Step("Stopping everything (pods, containerd, shims, rill-snapshotter, registry; unmounting)")
		// An interrupt (Ctrl-C) is no failure of the daemons: their logs are not worth printing.
		cerr := env.Close(context.WithoutCancel(ctx), err != nil && ctx.Err() == nil)
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		} else {
			p.Detail("every process stopped by PID; nothing left mounted below %s", env.Dir)
		}
	}()
	p.Detail("crictl: %s", env.CRI.Command())
	p.Detail("ctr:    %s", env.Ctr.Command())

	p.Step("Building a small image (static checker binary + layers with modes, owners, xattrs, links, whiteouts)")
	img, err := images.Fixture(ctx, env.RepoRoot, env.Dir, images.FixtureOptions{Repository: "rill/demo:v1"})
	if err != nil {
		return err
	}
	pushed, err := img.Push(ctx, env.Registry.Host())
	if err != nil {
		return err
	}
	p.Detail("pushed %s (manifest %s)", pushed.Ref, pushed.ManifestDigest)
	for i, l := range img.Spec.Layers {
		p.Detail("layer %d: %s, %d bytes (%s)", i, l.Digest, l.Size, filepath.Base(l.Path))
	}

	p.Step("Pulling it through CRI: crictl pull %s", pushed.Ref)
	if _, err := env.CRI.Pull(ctx, pushed.Ref); err != nil {
		return err
	}
	if err := showSnapshotter(ctx, p, env, pushed); err != nil {
		return err
	}

	p.Step("Running it in a pod (host network, pause sandbox from the local registry)")
	res, err := env.CRI.RunInPod(ctx, "rill-demo", pushed.Ref, img.Command, 2*time.Minute)
	if err != nil {
		return err
	}
	p.Detail("container exited with %d after %s; its output (the tree it sees):", res.ExitCode, res.Duration.Round(time.Millisecond))
	p.Detail("%s", indent(res.Stdout))
	if res.ExitCode != 0 || res.Stderr != "" {
		return fmt.Errorf("the container failed (exit %d): %s", res.ExitCode, res.Stderr)
	}
	if diff := manifest.Diff(img.Want, res.Stdout, 40); diff != "" {
		return fmt.Errorf("the container saw files that differ from the image's layers (- expected, + seen):\n%s", diff)
	}
	p.Detail("=> identical to the tree computed from the image's layers (%d paths)", strings.Count(img.Want, "\n"))

	p.Step("Removing the image (crictl rmi); containerd's garbage collector asks rill to clean up")
	if err := env.CRI.RemoveImage(ctx, pushed.Ref); err != nil {
		return err
	}
	return showRemoved(ctx, p, env, pushed)
}

// showSnapshotter shows which snapshotter containerd used and what rill now holds.
func showSnapshotter(ctx context.Context, p *printer, env *harness.Env, img *harness.PushedImage) error {
	labels, err := env.Containerd.ContentLabels(ctx, harness.CRINamespace, img.ConfigDigest.String())
	if err != nil {
		return err
	}
	var used []string
	for k, v := range labels {
		if name, ok := strings.CutPrefix(k, "containerd.io/gc.ref.snapshot."); ok {
			used = append(used, fmt.Sprintf("%s (top snapshot %s)", name, v))
		}
	}
	if len(used) == 0 {
		return fmt.Errorf("containerd did not unpack %s into any snapshotter (config labels: %v)", img.Ref, labels)
	}
	p.Detail("containerd unpacked the image with snapshotter: %s", strings.Join(used, ", "))
	infos, err := env.Snapshotter.Snapshots(ctx)
	if err != nil {
		return err
	}
	layer := map[string]int{}
	for i, c := range img.ChainIDs {
		layer[c.String()] = i
	}
	p.Detail("rill's metastore (asked over %s) holds %d snapshots:", env.Snapshotter.Socket(), len(infos))
	for _, info := range infos {
		mark := ""
		if i, ok := layer[info.Name[strings.LastIndex(info.Name, "/")+1:]]; ok {
			mark = fmt.Sprintf("  <- layer %d of the demo image", i)
		}
		p.Detail("  %-9s %s%s", info.Kind, info.Name, mark)
	}
	usage, err := env.Snapshotter.DiskUsage()
	if err != nil {
		return err
	}
	p.Detail("disk used by rill's snapshots: %.1f MiB", float64(usage)/(1<<20))
	return nil
}

// showRemoved waits until rill no longer holds the image's snapshots.
func showRemoved(ctx context.Context, p *printer, env *harness.Env, img *harness.PushedImage) error {
	chains := map[string]bool{}
	for _, c := range img.ChainIDs {
		chains[c.String()] = true
	}
	deadline := time.Now().Add(time.Minute)
	for {
		infos, err := env.Snapshotter.Snapshots(ctx)
		if err != nil {
			return err
		}
		left := 0
		for _, info := range infos {
			if chains[info.Name[strings.LastIndex(info.Name, "/")+1:]] {
				left++
			}
		}
		if left == 0 {
			usage, err := env.Snapshotter.DiskUsage()
			if err != nil {
				return err
			}
			p.Detail("rill holds %d snapshots now (the pause image's); its snapshots use %.1f MiB", len(infos), float64(usage)/(1<<20))
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("a minute after crictl rmi, rill still holds %d snapshots of %s", left, img.Ref)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}
