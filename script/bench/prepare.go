package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// prepare pushes what the modes pull for workload w and returns, per mode, the reference a
// node pulls (through the link). Pushes and `rill create` talk to the registry directly.
//
//	full          bench/W:full          the image as built
//	rill          bench/W:rill          the same image, with a streaming artifact bound by rill create
//	rill-profile  bench/W-profile:rill  the same, created with --prefetch-profile
//	fleet         bench/W-fleet:rill    the same, whose profile rill watch learnt from a first node
//	peer          bench/W-estargz:peer  the image converted to eStargz (or --peer-image)
//	stargz        bench/W-stargz:stargz      converted by estargz.Build, no prioritized files
//	stargz-opt    bench/W-stargz-opt:stargz  the same with the profile as prioritized files
//
// stargz-opt comes last: it takes the profile rill-profile uses (recorded by rill in a cold
// run, or given with --profile), or, without the rill-profile mode, the files the workload
// opens at start as the workload knows them.
func (bn *bench) prepare(ctx context.Context, w *workload) (map[string]string, error) {
	reg, via := bn.registry.Host(), bn.link.Addr()
	refs := map[string]string{}
	push := func(repo string) error { return bn.push(ctx, w, repo) }
	modes := slices.DeleteFunc(slices.Clone(bn.cfg.modes), func(m string) bool { return m == modeStargzOpt })
	if len(modes) < len(bn.cfg.modes) {
		modes = append(modes, modeStargzOpt)
	}
	for _, mode := range modes {
		switch mode {
		case modeFull:
			if err := push("bench/" + w.name + ":full"); err != nil {
				return nil, err
			}
			refs[mode] = via + "/bench/" + w.name + ":full"
		case modeRill:
			repo := "bench/" + w.name + ":rill"
			if err := push(repo); err != nil {
				return nil, err
			}
			if err := bn.rillCreate(ctx, reg+"/"+repo, "", false); err != nil {
				return nil, err
			}
			refs[mode] = via + "/" + repo
		case modeRillProfile:
			repo := "bench/" + w.name + "-profile:rill"
			if err := push(repo); err != nil {
				return nil, err
			}
			force := false
			if !w.profileGiven {
				// What a user does: stream the image once without a profile with rill
				// recording, then build the artifact again with the profile rill recorded.
				if err := bn.rillCreate(ctx, reg+"/"+repo, "", false); err != nil {
					return nil, err
				}
				if err := bn.record(ctx, w, via+"/"+repo); err != nil {
					return nil, err
				}
				force = true
			}
			profile := filepath.Join(bn.work, w.name+".profile")
			if err := os.WriteFile(profile, []byte(strings.Join(w.profile, "\n")+"\n"), 0o644); err != nil {
				return nil, err
			}
			bn.logf("%s: prefetch profile of %d paths, %s", w.name, len(w.profile), w.profileSource)
			if err := bn.rillCreate(ctx, reg+"/"+repo, profile, force); err != nil {
				return nil, err
			}
			refs[mode] = via + "/" + repo
		case modeFleet:
			ref, err := bn.prepareFleet(ctx, w)
			if err != nil {
				return nil, err
			}
			refs[mode] = ref
		case modePeer:
			ref, err := bn.preparePeer(ctx, w)
			if err != nil {
				return nil, err
			}
			refs[mode] = ref
		case modeStargz, modeStargzOpt:
			var prioritized []string
			if mode == modeStargzOpt {
				if len(w.profile) == 0 {
					return nil, fmt.Errorf("%s: no profile to prioritize for %s", w.name, mode)
				}
				prioritized = w.profile
				w.stargzSource = fmt.Sprintf("%d paths, %s", len(w.profile), w.profileSource)
			}
			ref, err := bn.prepareStargz(ctx, w, mode, prioritized)
			if err != nil {
				return nil, err
			}
			refs[mode] = ref
		}
	}
	return refs, nil
}

// push pushes w's image at repo on the registry itself.
func (bn *bench) push(ctx context.Context, w *workload, repo string) error {
	began := time.Now()
	if _, err := harness.Push(ctx, bn.registry.Host()+"/"+repo, harness.ImageSpec{Layers: w.layers, Config: w.config}); err != nil {
		return err
	}
	bn.logf("pushed %s in %s", repo, time.Since(began).Round(time.Millisecond))
	return nil
}

// record runs w once, cold, streaming ref with rill, and takes the prefetch profile rill
// recorded of its start as w's profile.
func (bn *bench) record(ctx context.Context, w *workload, ref string) error {
	bn.logf("%s: recording its start with rill (a cold run without a profile)", w.name)
	var paths []string
	r, err := bn.coldRunRecording(ctx, w, modeRill, ref, func(p []string) { paths = p })
	if err != nil {
		return fmt.Errorf("recording the start of %s: %w", w.name, err)
	}
	if len(paths) == 0 {
		return fmt.Errorf("recording the start of %s: rill recorded no file", w.name)
	}
	w.profile = paths
	w.profileSource = fmt.Sprintf("recorded by rill-snapshotter in a cold run (ready after %s)", sec(r.ready))
	return nil
}

// rillCreate runs `rill create` for ref (on the registry itself), with a profile if given;
// force rebuilds an artifact that exists.
func (bn *bench) rillCreate(ctx context.Context, ref, profile string, force bool) error {
	empty := filepath.Join(bn.work, "no-hosts")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return err
	}
	args := []string{"create", ref, "--plain-http", "--hosts-dir", empty, "--docker-config", filepath.Join(empty, "none.json")}
	if profile != "" {
		args = append(args, "--prefetch-profile", profile)
	}
	if force {
		args = append(args, "--force")
	}
	began := time.Now()
	cmd := exec.CommandContext(ctx, bn.rillCLI, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("rill %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if strings.Contains(line, "created the streaming artifact") || strings.Contains(line, "prefetch profile") {
			bn.logf("  rill create: %s", line)
		}
	}
	bn.logf("rill create %s took %s", ref, time.Since(began).Round(time.Millisecond))
	return nil
}

// preparePeer pushes what the peer pulls for w: the eStargz conversion, or nothing when
// --peer-image names a reference.
func (bn *bench) preparePeer(ctx context.Context, w *workload) (string, error) {
	img := bn.cfg.peer.image(w.name)
	if img != "estargz" {
		return strings.ReplaceAll(img, "{registry}", bn.link.Addr()), nil
	}
	dir := filepath.Join(bn.work, "estargz-"+w.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	ti := &images.TestImage{Repository: "bench/" + w.name + ":peer", Spec: harness.ImageSpec{Layers: w.layers, Config: w.config}}
	es, err := images.EStargz(ctx, ti, dir)
	if err != nil {
		return "", fmt.Errorf("converting %s to eStargz for the peer: %w", w.name, err)
	}
	if _, err := es.Push(ctx, bn.registry.Host()); err != nil {
		return "", err
	}
	bn.logf("pushed %s (eStargz, for the peer)", es.Repository)
	return bn.link.Addr() + "/" + es.Repository, nil
}

// readProfile reads a prefetch profile file (as rill create does).
func readProfile(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("--profile: %w", err)
	}
	defer f.Close()
	paths, err := artifact.ParseProfile(f)
	if err != nil {
		return nil, fmt.Errorf("--profile %s: %w", file, err)
	}
	return slices.Clip(paths), nil
}
