package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
)

func runVerify(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rill verify", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var (
		rf     registryFlags
		asJSON bool
	)
	rf.register(fs)
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill verify IMAGE [flags]\n\nDownloads every streaming artifact of IMAGE and checks that each layer decompresses to exactly\nthe original layer (its diff_id), that its TOC matches, and that the tag's binding is intact.\n\n")
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
	audits, verr := c.Verify(ctx, image)
	if asJSON && audits != nil {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(audits); err != nil {
			return err
		}
		return verr
	}
	if verr == nil && len(audits) == 0 {
		fmt.Fprintf(env.stdout, "%s has no streaming artifacts\n", image)
	}
	for _, a := range audits {
		how := "referrer only"
		if a.Bound {
			how = "bound"
		}
		if len(a.Problems) == 0 {
			fmt.Fprintf(env.stdout, "%s %s (%s): ok, %d layers match the image's diff_ids\n", a.Platform, a.Artifact.Digest, how, len(a.Layers))
			continue
		}
		fmt.Fprintf(env.stdout, "%s %s (%s): FAILED\n", a.Platform, a.Artifact.Digest, how)
		for _, p := range a.Problems {
			fmt.Fprintf(env.stdout, "  %s\n", p)
		}
	}
	return verr
}
