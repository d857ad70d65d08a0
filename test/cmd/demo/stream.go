package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/rillstream/rill/internal/link"
	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// The emulated link between the node and the registry.
const (
	linkBits = 100e6
	linkRTT  = 20 * time.Millisecond
)

// pullResult is one pull and run of the demo image.
type pullResult struct {
	mode       string
	ready      time.Duration // from the start of the pull to the container's output
	bytesReady int64         // over the link until then
	later      int64         // over the link afterwards, until the background fetch ended
	laterNote  string
}

// runStreaming is the demo's second part: a realistic image, made streamable with rill create,
// pulled in full and then streamed over an emulated slow link, each followed by a container
// doing real work.
func runStreaming(ctx context.Context, p *printer, repoRoot string) (err error) {
	p.Step("Building the demo image: Debian bookworm + python3, and a 256 MiB data file (built once, cached)")
	img, err := images.DemoPython(ctx, images.DefaultCacheDir, p.Detail)
	if err != nil {
		return err
	}
	var total int64
	for i, l := range img.Spec.Layers {
		p.Detail("layer %d: %.1f MB compressed, %s", i, float64(l.Size)/1e6, filepath.Base(l.Path))
		total += l.Size
	}

	work, err := os.MkdirTemp("", "rill-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	reg, err := harness.StartRegistry(ctx, filepath.Join(work, "registry"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, reg.Stop(context.WithoutCancel(ctx))) }()
	ln, err := link.Start(reg.Host(), link.Config{BitsPerSecond: linkBits, RTT: linkRTT})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, ln.Close()) }()
	pushed, err := img.Push(ctx, reg.Host())
	if err != nil {
		return err
	}
	p.Detail("pushed %s (%.1f MB); nodes pull through %s, an emulated %.0f Mbit/s link with %s round trips",
		pushed.Ref, float64(total)/1e6, ln.Addr(), linkBits/1e6, linkRTT)

	p.Step("rill create %s: convert each layer to byte-preserving eStargz, push, bind to the tag", pushed.Ref)
	bin := filepath.Join(work, "rill")
	if err := harness.BuildGo(ctx, repoRoot, "./cmd/rill", bin, false); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, bin, "create", "--plain-http", "--hosts-dir", work, "--docker-config", filepath.Join(work, "none.json"), pushed.Ref).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rill create: %w\n%s", err, out)
	}
	p.Detail("%s", lastLines(string(out), 4))

	ref := ln.Addr() + "/" + img.Repository
	var results []pullResult
	for _, mode := range []string{"full pull", "rill streaming"} {
		p.Step("%s: fresh containerd (CRI snapshotter %s), crictl pull %s, then the container's work", mode, map[string]string{"full pull": "overlayfs", "rill streaming": "rill"}[mode], ref)
		r, err := pullAndRun(ctx, p, reg, ln, mode, ref, img)
		if err != nil {
			return err
		}
		results = append(results, r)
	}

	p.Step("Side by side (time to ready: from the start of the pull to the container's result)")
	p.Detail("%-16s %14s %22s %26s", "", "time to ready", "bytes before ready", "bytes later (background)")
	for _, r := range results {
		p.Detail("%-16s %13.1fs %19.1f MB %23.1f MB%s", r.mode, r.ready.Seconds(), float64(r.bytesReady)/1e6, float64(r.later)/1e6, r.laterNote)
	}
	if len(results) == 2 && results[1].ready > 0 {
		p.Detail("=> streaming was ready %.1f× sooner, after fetching %.1f%% of what the full pull fetched",
			results[0].ready.Seconds()/results[1].ready.Seconds(), 100*float64(results[1].bytesReady)/float64(max(results[0].bytesReady, 1)))
	}
	return nil
}

func pullAndRun(ctx context.Context, p *printer, reg *harness.Registry, ln *link.Link, mode, ref string, img *images.TestImage) (res pullResult, err error) {
	res.mode = mode
	opts := harness.Options{Logf: func(string, ...any) {}, Registry: reg, RegistryHosts: []string{ln.Addr()},
		SnapshotterStreaming: []string{`background_delay = "20s"`}} // after the work: its bytes count as "later"
	if mode == "full pull" {
		opts.CRISnapshotter = "overlayfs"
	}
	env, err := harness.Start(ctx, opts)
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := env.Close(context.WithoutCancel(ctx), err != nil && ctx.Err() == nil); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	before := ln.BytesDown()
	began := time.Now()
	if _, err := env.CRI.Pull(ctx, ref); err != nil {
		return res, err
	}
	pulled := time.Since(began)
	run, err := env.CRI.RunInPod(ctx, "rill-demo-"+strings.ReplaceAll(mode, " ", "-"), ref, img.Command, 5*time.Minute)
	if err != nil {
		return res, err
	}
	res.ready, res.bytesReady = time.Since(began), ln.BytesDown()-before
	if run.ExitCode != 0 || run.Stdout != img.Want {
		return res, fmt.Errorf("the container's work failed (exit %d): stdout %q, want %q; stderr %s", run.ExitCode, run.Stdout, img.Want, run.Stderr)
	}
	p.Detail("pulled in %.1fs; the container read 32 records spread over the data file and printed %s", pulled.Seconds(), strings.TrimSpace(run.Stdout))
	p.Detail("ready after %.1fs, %.1f MB over the link", res.ready.Seconds(), float64(res.bytesReady)/1e6)
	if mode == "full pull" {
		return res, nil
	}
	p.Detail("waiting for the background fetch to make every layer local and verify it against the original diff_id...")
	state, err := waitBackground(ctx, filepath.Join(filepath.Dir(env.Snapshotter.Socket()), "status.sock"), 5*time.Minute)
	if err != nil {
		return res, err
	}
	res.later = ln.BytesDown() - before - res.bytesReady
	p.Detail("background fetch ended (%s) after %.1f MB more", state, float64(res.later)/1e6)
	return res, nil
}

// waitBackground polls rill-snapshotter's status until no streamed layer's background fetch
// is running any more, and returns the layers' states.
func waitBackground(ctx context.Context, socket string, timeout time.Duration) (string, error) {
	client := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get("http://rill/v1/layers")
		if err != nil {
			return "", err
		}
		var layers []struct {
			Background string `json:"background"`
		}
		err = json.NewDecoder(resp.Body).Decode(&layers)
		resp.Body.Close()
		if err != nil {
			return "", err
		}
		var states []string
		running := len(layers) == 0
		for _, l := range layers {
			states = append(states, l.Background)
			if l.Background == "running" || l.Background == "waiting" || l.Background == "off" || l.Background == "" {
				running = true
			}
		}
		if !running {
			return strings.Join(states, ", "), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the background fetch still runs after %s (layers: %s)", timeout, strings.Join(states, ", "))
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
