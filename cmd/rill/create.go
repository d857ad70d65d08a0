package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rillstream/rill/convert"
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
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill create IMAGE [flags]\n\nBuilds IMAGE's streaming artifact (byte-preserving eStargz layers), pushes it beside the\nimage as an OCI referrer and binds it to the tag. Idempotent: an existing artifact is kept.\n\n")
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
		opts.Profile, err = convert.ParseProfile(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("--prefetch-profile %s: %w: %w", profile, err, errUsage)
		}
	}
	copts := []convert.Option{
		convert.WithPlatforms(ps...),
		convert.WithLayerOptions(convert.LayerOptions{ChunkSize: chunkSize, CompressionLevel: level}),
		convert.WithProgress(newProgressPrinter(env).print),
		convert.WithChunkVerification(verifyAll),
	}
	if parallel != 0 {
		copts = append(copts, convert.WithParallelism(parallel))
	}
	if tempDir != "" {
		copts = append(copts, convert.WithTempDir(tempDir))
	}
	c, cleanup, err := rf.converter(env, image, copts...)
	if err != nil {
		return fmt.Errorf("%w: %w", err, errUsage)
	}
	defer cleanup()

	began := time.Now()
	res, err := c.Create(ctx, image, opts)
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
	return nil
}

// progressPrinter prints one line per layer and step on stderr (plain lines: they read the
// same in a terminal, a CI log or a pipe).
type progressPrinter struct {
	mu  sync.Mutex
	env *cliEnv
}

func newProgressPrinter(env *cliEnv) *progressPrinter { return &progressPrinter{env: env} }

func (p *progressPrinter) print(ev convert.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prefix := fmt.Sprintf("%s layer %d/%d %s", ev.Platform, ev.Index+1, ev.Count, short(ev.Original.Encoded()))
	switch ev.Phase {
	case convert.PhaseConverting:
		fmt.Fprintf(p.env.stderr, "%s: converting %s of %s\n", prefix, mb(ev.Read), mb(ev.Size))
	case convert.PhaseDone:
		r := ev.Result
		fmt.Fprintf(p.env.stderr, "%s: done: %s tar → %s eStargz (%s, TOC %s)\n", prefix, mb(r.OriginalSize), mb(r.Size), short(r.Digest.Encoded()), short(r.TOCDigest.Encoded()))
	default:
		fmt.Fprintf(p.env.stderr, "%s: %s\n", prefix, ev.Phase)
	}
}

func short(hex string) string {
	if len(hex) > 12 {
		return hex[:12]
	}
	return hex
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
