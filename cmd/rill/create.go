package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/operation"
	"github.com/rillstream/rill/convert/watch"
)

func runCreate(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rill create", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var (
		rf        registryFlags
		platforms = strings.Join(convert.DefaultPlatforms(), ",")
		profile   string
		noBind    bool
		force     bool
		chunkSize int
		level     int
		parallel  int
		tempDir   string
		verifyAll bool
		noWait    bool
		watcher   string
	)
	rf.register(fs)
	fs.StringVar(&platforms, "platform", platforms, "streaming platforms, comma-separated: only manifests of these get artifacts")
	fs.StringVar(&profile, "prefetch-profile", "", "file listing the paths the image reads at start, in order (one a line, or JSON)")
	fs.BoolVar(&noBind, "no-bind", false, "push the artifact as a referrer only; do not bind it to the tag")
	fs.BoolVar(&force, "force", false, "rebuild the artifact even if one exists (the old one is deleted)")
	fs.IntVar(&chunkSize, "chunk-size", convert.DefaultChunkSize, "largest piece of a file in one gzip member, in bytes (at least 4096)")
	fs.IntVar(&level, "compression-level", 0, "gzip level of the converted layers, -2..9 (0: gzip's default)")
	fs.IntVar(&parallel, "parallel", 0, "layers converted at once (default: CPUs, at most 4)")
	fs.BoolVar(&verifyAll, "verify-chunks", false, "before pushing, check every chunk of every converted layer against the TOC (slower; rill verify does it later)")
	fs.StringVar(&tempDir, "temp-dir", "", "where converted layers are staged before the push (default $TMPDIR)")
	fs.BoolVar(&noWait, "no-wait", false, "hand the create to rill watch and print its operation ID at once (follow it with 'rill operation show ID')")
	fs.StringVar(&watcher, "watcher", watch.DefaultAPIAddress, "with --no-wait: the watcher's local API (unix:///path or http://127.0.0.1:PORT, as given to rill watch --api)")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill create IMAGE [flags]\n\nBuilds IMAGE's streaming artifact (byte-preserving eStargz layers), pushes it beside the\nimage as an OCI referrer and binds it to the tag. Idempotent: an existing artifact is kept.\nWith --no-wait, rill watch does the work (with its own registry access) as an operation.\n\n")
		fs.PrintDefaults()
	}
	image, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	ps, err := convert.ParsePlatforms(strings.Split(platforms, ","))
	if err != nil {
		return fmt.Errorf("--platform: %w: %w", err, errUsage)
	}
	var opts convert.CreateOptions
	opts.Bind, opts.Force = !noBind, force
	if profile != "" {
		f, err := os.Open(profile)
		if err != nil {
			return fmt.Errorf("--prefetch-profile: %w: %w", err, errUsage)
		}
		opts.Profile, err = artifact.ParseProfile(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("--prefetch-profile %s: %w: %w", profile, err, errUsage)
		}
	}
	if noWait {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if set["parallel"] || set["temp-dir"] {
			return fmt.Errorf("--parallel and --temp-dir set the conversion's resources on this machine; with --no-wait, rill watch's own apply: %w", errUsage)
		}
		spec := operation.CreateSpec{Force: force, NoBind: noBind, Profile: opts.Profile, VerifyChunks: verifyAll}
		if set["platform"] {
			spec.Platforms = strings.Split(platforms, ",")
		}
		if set["chunk-size"] {
			spec.ChunkSize = chunkSize
		}
		if set["compression-level"] {
			spec.CompressionLevel = level
		}
		return submitCreate(ctx, env, watcher, image, spec)
	}
	progress := newProgressRenderer(env.stderr, isTerminal(env.stderr))
	defer progress.Close()
	copts := []convert.Option{
		convert.WithPlatforms(ps...),
		convert.WithLayerOptions(convert.LayerOptions{ChunkSize: chunkSize, CompressionLevel: level}),
		convert.WithProgress(progress.Update),
		convert.WithChunkVerification(verifyAll),
	}
	if parallel != 0 {
		copts = append(copts, convert.WithParallelism(parallel))
	}
	if tempDir != "" {
		copts = append(copts, convert.WithTempDir(tempDir))
	}
	// Log records go through the renderer, above the bars.
	c, cleanup, err := rf.converter(&cliEnv{stdout: env.stdout, stderr: progress}, image, copts...)
	if err != nil {
		return fmt.Errorf("%w: %w", err, errUsage)
	}
	defer cleanup()

	began := time.Now()
	res, err := c.Create(ctx, image, opts)
	progress.Close() // the bars end before the summary or the error is printed
	if err != nil {
		return err
	}
	elapsed := time.Since(began)
	var converted int64
	for _, a := range res.Artifacts {
		if a.Existing {
			fmt.Fprintf(env.stdout, "%s %s already has the streaming artifact %s (--force rebuilds it)\n", res.Reference, a.Platform, a.Artifact.Digest)
			continue
		}
		if a.Reprofiled != "" {
			fmt.Fprintf(env.stdout, "%s %s: pushed the streaming artifact %s: %s with the new prefetch profile, its layers reused (%s is kept for the tags bound to it)\n",
				res.Reference, a.Platform, a.Artifact.Digest, a.Reprofiled, a.Reprofiled)
			continue
		}
		var orig, conv, tar int64
		for _, l := range a.Layers {
			orig += l.Original.Size
			conv += l.Converted.Size
			tar += l.Converted.OriginalSize
		}
		converted += tar
		fmt.Fprintf(env.stdout, "%s %s: created the streaming artifact %s of %s (%d layers, %s compressed, %s as eStargz, %.3f×)\n",
			res.Reference, a.Platform, a.Artifact.Digest, a.Subject.Digest, len(a.Layers), mb(orig), mb(conv), float64(conv)/float64(max(orig, 1)))
	}
	if converted > 0 {
		fmt.Fprintf(env.stdout, "converted %s of uncompressed layers in %s (%.1f MB/s)\n", mb(converted), elapsed.Round(time.Millisecond), float64(converted)/1e6/elapsed.Seconds())
	}
	switch {
	case res.Bound && res.Unchanged:
		fmt.Fprintf(env.stdout, "the tag is already bound to it (index %s); nothing to do\n", res.Index.Digest)
	case res.Bound:
		fmt.Fprintf(env.stdout, "bound to the tag: it now names the index %s (platform manifests unchanged)\n", res.Index.Digest)
	default:
		fmt.Fprintf(env.stdout, "pushed as a referrer only (not bound to a tag): nodes use it with streaming.trust = \"referrers\"\n")
	}
	if len(opts.Profile) > 0 {
		fmt.Fprintf(env.stdout, "prefetch profile: %d of %d paths recorded\n", res.ProfileKept, len(opts.Profile))
	}
	for _, d := range res.Removed {
		fmt.Fprintf(env.stdout, "deleted the replaced artifact %s\n", d)
	}
	for _, d := range res.KeptBoundElsewhere {
		fmt.Fprintf(env.stdout, "kept the replaced artifact %s: another tag is bound to it\n", d)
	}
	return nil
}

// submitCreate hands the create to the watcher at addr and prints its operation.
func submitCreate(ctx context.Context, env *cliEnv, addr, image string, spec operation.CreateSpec) error {
	c, err := watch.NewClient(addr)
	if err != nil {
		return fmt.Errorf("--watcher: %w: %w", err, errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	op, err := c.Create(ctx, watch.CreateRequest{Image: image, Create: spec})
	if errdefs.IsUnavailable(err) {
		return fmt.Errorf("--no-wait hands the create to rill watch, but no watcher answers at %s (start 'rill watch' with --api %s, point --watcher at its --api address, or drop --no-wait to create here): %w",
			addr, addr, err)
	}
	if err != nil {
		return fmt.Errorf("the watcher at %s refused the create: %w", addr, err)
	}
	fmt.Fprintf(env.stdout, "%s\n", op.ID)
	fmt.Fprintf(env.stderr, "queued operation %s: create of %s@%s; follow it with 'rill operation show %s", op.ID, op.Image(), op.Digest, op.ID)
	if addr != watch.DefaultAPIAddress {
		fmt.Fprintf(env.stderr, " --watcher %s", addr)
	}
	fmt.Fprintf(env.stderr, "'\n")
	return nil
}

func short(hex string) string {
	if len(hex) > 12 {
		return hex[:12]
	}
	return hex
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
