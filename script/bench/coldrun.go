package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/test/harness"
)

// runResult is what one cold run measured.
type runResult struct {
	workload, mode string
	run            int
	pull           time.Duration // crictl pull
	ready          time.Duration // from the pull's start to the ready line (the headline)
	bytesReady     int64         // bytes the registry sent before ready
	bytesTotal     int64         // ... and in all, once the link fell quiet
	// fetched is rill's rill_fs_fetched_bytes_total by kind at the end of the run, and
	// fetchedReady the same when the container was ready; requests counts rill's registry
	// requests before ready. Empty for other modes.
	fetched, fetchedReady map[string]int64
	requests              int64
}

// splitText describes rill's fetch split, for progress lines.
func (r runResult) splitText() string {
	if len(r.fetched) == 0 {
		return ""
	}
	var parts []string
	for _, k := range fetchKinds() {
		if v, ok := r.fetched[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", k, mb(v)))
		}
	}
	return fmt.Sprintf("; rill fetched %s; %d registry requests before ready", strings.Join(parts, ", "), r.requests)
}

// coldRun runs workload w once in mode from a cold start: fresh containerd and snapshotter,
// page cache dropped; the registry and the link are the benchmark's.
func (bn *bench) coldRun(parent context.Context, w *workload, mode, ref string) (res runResult, err error) {
	return bn.coldRunRecording(parent, w, mode, ref, nil)
}

// recordWindow is rill's access-recording window in the benchmark's runs: longer than any
// start, so that the profile of a recording run holds everything read until ready.
const recordWindow = "30m"

// coldRunRecording is coldRun; with recorded set, once the container is ready it removes the
// pod and stops rill-snapshotter, which writes the prefetch profile it recorded, and passes
// the recorded paths to recorded.
func (bn *bench) coldRunRecording(parent context.Context, w *workload, mode, ref string, recorded func([]string)) (res runResult, err error) {
	return bn.coldRunWith(parent, w, mode, ref, runOptions{recorded: recorded})
}

// runOptions change a cold run.
type runOptions struct {
	// recorded: see coldRunRecording.
	recorded func([]string)
	// config is more TOML for rill-snapshotter's config; recordWindow replaces recordWindow.
	config, recordWindow string
	// afterReady, when set, is called once the container is ready, and ends the run.
	afterReady func(ctx context.Context) error
}

// coldRunWith is coldRun changed by ro.
func (bn *bench) coldRunWith(parent context.Context, w *workload, mode, ref string, ro runOptions) (res runResult, err error) {
	recorded := ro.recorded
	ctx, cancel := context.WithTimeout(parent, bn.cfg.timeout)
	defer cancel()
	res = runResult{workload: w.name, mode: mode}
	dir, err := os.MkdirTemp(bn.work, "run-")
	if err != nil {
		return res, err
	}
	opts := harness.Options{
		Logf:                 func(string, ...any) {},
		TempDir:              dir,
		Registry:             bn.registry,
		RegistryHosts:        []string{bn.link.Addr()},
		SnapshotterStreaming: []string{fmt.Sprintf("record_window = %q", cmp.Or(ro.recordWindow, recordWindow))},
		SnapshotterConfig:    ro.config,
	}
	switch mode {
	case modeFull:
		opts.CRISnapshotter = "overlayfs"
	case modeRill, modeRillProfile, modeFleet:
		if opts.MetricsAddress, err = freePort(); err != nil {
			return res, err
		}
	case modePeer, modeStargz, modeStargzOpt:
		pc := bn.cfg.peer
		if isStargz(mode) {
			pc = bn.stargz
		}
		peer, err := startPeer(ctx, pc, dir, bn.link.Addr())
		if err != nil {
			return res, err
		}
		defer func() {
			err = errors.Join(err, peer.stop(), harness.UnmountAll(peer.root))
		}()
		opts.CRISnapshotter = pc.name
		opts.ProxySnapshotters = map[string]string{pc.name: peer.socket}
	}
	started := time.Now()
	env, err := harness.Start(ctx, opts)
	if err != nil {
		return res, fmt.Errorf("starting containerd and rill-snapshotter: %w", err)
	}
	bn.logf("  fresh containerd (CRI snapshotter %s) and rill-snapshotter up in %s", cmp.Or(opts.CRISnapshotter, "rill"), sec(time.Since(started)))
	defer func() {
		stopping := time.Now()
		if cerr := env.Close(context.WithoutCancel(ctx), err != nil); cerr != nil {
			err = errors.Join(err, fmt.Errorf("stopping containerd and rill-snapshotter: %w", cerr))
		}
		bn.logf("  stopped them in %s", sec(time.Since(stopping)))
	}()

	podDir := filepath.Join(dir, "pod")
	podConfig, ctrConfig, logPath, err := writePodConfigs(podDir, w, ref)
	if err != nil {
		return res, err
	}
	podID, err := env.CRI.Run(ctx, "runp", podConfig)
	if err != nil {
		return res, err
	}
	podID = strings.TrimSpace(podID)
	defer func() {
		_, _ = env.CRI.Run(context.WithoutCancel(ctx), "stopp", podID)
		_, _ = env.CRI.Run(context.WithoutCancel(ctx), "rmp", "--force", podID)
	}()
	if err := dropCaches(); err != nil {
		return res, err
	}

	before := bn.link.BytesDown()
	began := time.Now()
	if _, err := env.CRI.Run(ctx, "pull", ref); err != nil {
		return res, err
	}
	res.pull = time.Since(began)
	ctrID, err := env.CRI.Run(ctx, "create", podID, ctrConfig, podConfig)
	if err != nil {
		return res, err
	}
	ctrID = strings.TrimSpace(ctrID)
	if _, err := env.CRI.Run(ctx, "start", ctrID); err != nil {
		return res, err
	}
	if err := waitForLine(ctx, logPath, readyLine); err != nil {
		return res, fmt.Errorf("waiting for %s to be ready: %w", w.name, err)
	}
	res.ready = time.Since(began)
	res.bytesReady = bn.link.BytesDown() - before
	if opts.MetricsAddress != "" {
		m, err := scrape(ctx, env)
		if err != nil {
			return res, err
		}
		res.fetchedReady, res.requests = m.fetched, m.requests
	}
	if ro.afterReady != nil {
		return res, ro.afterReady(ctx)
	}
	if recorded != nil {
		paths, err := bn.collectProfile(ctx, env, podID)
		if err != nil {
			return res, err
		}
		recorded(paths)
		return res, nil
	}
	bn.logf("  ready after %s; waiting for the link to fall quiet", sec(res.ready))
	quietAfter := time.Now()
	switch {
	case opts.CRISnapshotter == "": // rill: its background fetch starts after a delay
		quietAfter = began.Add(backgroundStart)
	case isStargz(mode): // stargz-snapshotter: once on-demand reads have been silent a while
		quietAfter = later(began.Add(backgroundStart), time.Now().Add(stargzSilence))
	}
	bn.settle(ctx, quietAfter)
	res.bytesTotal = bn.link.BytesDown() - before
	if opts.MetricsAddress != "" {
		m, err := scrape(ctx, env)
		if err != nil {
			return res, err
		}
		res.fetched = m.fetched
	}
	return res, nil
}

// collectProfile ends a recording run: it removes the pod, stops rill-snapshotter (which
// writes the profiles it is recording) and reads the one profile written, then starts
// rill-snapshotter again so that the run ends as every other.
func (bn *bench) collectProfile(ctx context.Context, env *harness.Env, podID string) ([]string, error) {
	for _, args := range [][]string{{"stopp", podID}, {"rmp", "--force", podID}} {
		if _, err := env.CRI.Run(ctx, args...); err != nil {
			return nil, err
		}
	}
	if err := env.Snapshotter.Stop(ctx); err != nil {
		return nil, fmt.Errorf("stopping rill-snapshotter to collect its recorded profile: %w", err)
	}
	files, err := filepath.Glob(filepath.Join(env.Snapshotter.Root(), "profiles", "*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) != 1 {
		return nil, fmt.Errorf("rill-snapshotter recorded %d prefetch profiles (%v), want 1", len(files), files)
	}
	f, err := os.Open(files[0])
	if err != nil {
		return nil, err
	}
	defer f.Close()
	paths, err := artifact.ParseProfile(f)
	if err != nil {
		return nil, fmt.Errorf("the profile rill-snapshotter recorded: %w", err)
	}
	if err := env.StartSnapshotter(ctx); err != nil {
		return nil, err
	}
	return paths, nil
}

// backgroundStart bounds when rill's background fetch has started after the pull began: its
// default streaming.background_delay (10 s after the mount) and a margin.
const backgroundStart = 15 * time.Second

// settle waits until the link has carried nothing for a second (the background fetch, if any,
// is over), for at most --settle; quiet before quietAfter does not count (the link is quiet
// between a quick start and the background fetch).
func (bn *bench) settle(ctx context.Context, quietAfter time.Time) {
	deadline := time.Now().Add(bn.cfg.settle)
	last, quietSince := bn.link.BytesDown(), time.Now()
	for time.Now().Before(deadline) && (time.Since(quietSince) < time.Second || time.Now().Before(quietAfter)) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		if n := bn.link.BytesDown(); n != last {
			last, quietSince = n, time.Now()
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// waitForLine polls the container's CRI log until a line of its stdout is want.
func waitForLine(ctx context.Context, logPath, want string) error {
	suffix := " stdout F " + want
	for {
		if data, err := os.ReadFile(logPath); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				if strings.HasSuffix(line, suffix) {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			data, _ := os.ReadFile(logPath)
			return fmt.Errorf("%w; the container's log so far:\n%s", ctx.Err(), data)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// writePodConfigs writes the pod sandbox config (host network: no CNI) and the container
// config into dir, and returns their paths and the container's log file.
func writePodConfigs(dir string, w *workload, ref string) (pod, ctr, log string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", "", err
	}
	podConfig := map[string]any{
		"metadata":      map[string]any{"name": "bench-" + w.name, "namespace": "rill-bench", "uid": filepath.Base(filepath.Dir(dir)), "attempt": 0},
		"log_directory": dir,
		"linux": map[string]any{"security_context": map[string]any{
			"namespace_options": map[string]any{"network": 2},
		}},
	}
	ctrConfig := map[string]any{
		"metadata": map[string]any{"name": w.name},
		"image":    map[string]any{"image": ref},
		"command":  w.command,
		"log_path": w.name + ".log",
		"linux":    map[string]any{},
	}
	pod, ctr = filepath.Join(dir, "pod.json"), filepath.Join(dir, "container.json")
	for path, v := range map[string]any{pod: podConfig, ctr: ctrConfig} {
		data, err := json.Marshal(v)
		if err != nil {
			return "", "", "", err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return "", "", "", err
		}
	}
	return pod, ctr, filepath.Join(dir, w.name+".log"), nil
}

// dropCaches writes back and drops the page cache, dentries and inodes: every run reads cold.
func dropCaches() error {
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
		return fmt.Errorf("dropping the page cache: %w", err)
	}
	return nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
