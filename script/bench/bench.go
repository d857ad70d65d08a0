package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/rillstream/rill/internal/link"
	"github.com/rillstream/rill/test/harness"
)

// bench is one benchmark: the registry and the link it keeps for all runs.
type bench struct {
	cfg      *config
	repoRoot string
	work     string // temporary directory of this benchmark
	registry *harness.Registry
	link     *link.Link
	rillCLI  string
	logf     func(format string, args ...any)
	watch    *fleetWatcher // the fleet mode's rill watch, once started
	stargz   *peerConfig   // stargz-snapshotter, for the stargz modes
}

// run runs the benchmark cfg describes and writes its report to stdout and cfg.out.
func run(ctx context.Context, cfg *config, stdout io.Writer) (_ []summary, err error) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the benchmark runs as root (containerd, overlay and FUSE mounts, drop_caches)")
	}
	if err := harness.CheckTools("containerd", "ctr", "containerd-shim-runc-v2", "runc", "crictl", "registry", "go"); err != nil {
		return nil, err
	}
	repoRoot, err := harness.RepoRoot(ctx)
	if err != nil {
		return nil, err
	}
	sz := fullSizes()
	if cfg.quick {
		sz = quickSizes()
	}
	b := &builder{repoRoot: repoRoot, cacheDir: cfg.cacheDir, sizes: sz, logf: logf}
	var workloads []*workload
	for _, name := range cfg.workloads {
		w, err := buildWorkload(ctx, b, name)
		if err != nil {
			return nil, err
		}
		if file, ok := cfg.profiles[name]; ok {
			if w.profile, err = readProfile(file); err != nil {
				return nil, err
			}
			w.profileSource = "given on the command line: " + file
			w.profileGiven = true
		}
		logf("workload %s: %d layers, %s uncompressed, %s compressed; reads %s at start (%d files opened)",
			name, len(w.layers), mb(w.imageBytes), mb(w.compressed), mb(w.startBytes), len(w.profile))
		workloads = append(workloads, w)
	}
	if cfg.buildOnly {
		return nil, nil
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return nil, fmt.Errorf("creating --out: %w", err)
	}

	bn := &bench{cfg: cfg, repoRoot: repoRoot, logf: logf}
	if bn.work, err = os.MkdirTemp("", "rill-bench-"); err != nil {
		return nil, err
	}
	defer func() {
		if cerr := bn.close(context.WithoutCancel(ctx)); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if err := bn.start(ctx); err != nil {
		return nil, err
	}
	var results []runResult
	for _, w := range workloads {
		refs, err := bn.prepare(ctx, w)
		if err != nil {
			return nil, err
		}
		for _, mode := range cfg.modes {
			for i := range cfg.runs {
				logf("run: %s, %s, %d of %d", w.name, mode, i+1, cfg.runs)
				r, err := bn.coldRun(ctx, w, mode, refs[mode])
				if err != nil {
					return nil, fmt.Errorf("%s, %s, run %d: %w", w.name, mode, i+1, err)
				}
				r.run = i + 1
				logf("  → pull %s, ready %s, %s before ready, %s in total%s", sec(r.pull), sec(r.ready),
					mb(r.bytesReady), mb(r.bytesTotal), r.splitText())
				results = append(results, r)
			}
		}
	}
	sums := summarize(workloads, cfg, results)
	return sums, bn.report(stdout, workloads, results, sums)
}

// start starts the registry, the link in front of it, and builds the rill CLI.
func (bn *bench) start(ctx context.Context) error {
	var err error
	if bn.registry, err = harness.StartRegistry(ctx, filepath.Join(bn.work, "registry")); err != nil {
		return err
	}
	lc := link.Config{BitsPerSecond: bn.cfg.bandwidth, RTT: bn.cfg.rtt}
	if bn.cfg.noLink {
		lc = link.Config{} // counts bytes only
	}
	if bn.link, err = link.Start(bn.registry.Host(), lc); err != nil {
		return err
	}
	bn.logf("registry on %s (pid %d); nodes pull through %s", bn.registry.Host(), bn.registry.Process().PID(), bn.linkText())
	bn.rillCLI = filepath.Join(bn.work, "rill")
	if err := harness.BuildGo(ctx, bn.repoRoot, "./cmd/rill", bn.rillCLI, false); err != nil {
		return fmt.Errorf("building the rill CLI: %w", err)
	}
	if slices.ContainsFunc(bn.cfg.modes, isStargz) {
		bin := bn.cfg.stargzBin
		if bin == "" {
			began := time.Now()
			if bin, err = buildStargzDaemon(ctx, bn.repoRoot, filepath.Join(bn.cfg.cacheDir, "bin")); err != nil {
				return err
			}
			bn.logf("built stargz-snapshotter's daemon %s in %s", bin, time.Since(began).Round(time.Millisecond))
		}
		bn.stargz = stargzPeer(bin)
	}
	return nil
}

// linkLabel describes the link for the chart.
func (bn *bench) linkLabel() string {
	if bn.cfg.noLink {
		return "no link: registry on loopback"
	}
	return fmt.Sprintf("link: %.0f Mbit/s (shared by all connections), %s RTT", bn.cfg.bandwidth/1e6, bn.cfg.rtt)
}

func (bn *bench) linkText() string {
	if bn.cfg.noLink {
		return fmt.Sprintf("%s (no link: loopback, counting bytes only)", bn.link.Addr())
	}
	return fmt.Sprintf("the link %s (%.0f Mbit/s each way, shared; %s RTT)", bn.link.Addr(), bn.cfg.bandwidth/1e6, bn.cfg.rtt)
}

// close stops the link and the registry (the runs stop what they start).
func (bn *bench) close(ctx context.Context) error {
	var errs []error
	errs = append(errs, bn.stopWatcher())
	if bn.link != nil {
		errs = append(errs, bn.link.Close())
	}
	if bn.registry != nil {
		errs = append(errs, bn.registry.Stop(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.RemoveAll(bn.work)
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

func sec(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
