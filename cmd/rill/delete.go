package main

import (
	"context"
	"flag"
	"fmt"
)

func runDelete(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rill delete", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var (
		rf            registryFlags
		streamingOnly bool
	)
	rf.register(fs)
	fs.BoolVar(&streamingOnly, "streaming-only", false, "delete only the streaming artifacts; the tag is put back to the original image")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill delete IMAGE [flags]\n\nDeletes IMAGE (its tag, index and platform manifests) together with its streaming artifacts.\nBlobs are left to the registry's garbage collection.\n\n")
		fs.PrintDefaults()
	}
	image, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	c, cleanup, err := rf.converter(env, image)
	if err != nil {
		return fmt.Errorf("%w: %w", err, errUsage)
	}
	defer cleanup()
	res, err := c.Delete(ctx, image, streamingOnly)
	if res != nil {
		if res.Unbound {
			fmt.Fprintf(env.stdout, "the tag names the original image again\n")
		}
		for _, d := range res.Artifacts {
			fmt.Fprintf(env.stdout, "deleted streaming artifact %s\n", d)
		}
		for _, d := range res.Manifests {
			fmt.Fprintf(env.stdout, "deleted %s\n", d)
		}
	}
	if err != nil {
		return err
	}
	if streamingOnly && len(res.Artifacts) == 0 {
		fmt.Fprintf(env.stdout, "%s has no streaming artifacts\n", res.Reference)
	}
	return nil
}
