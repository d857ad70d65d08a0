package main

import (
	"context"
	"flag"
	"fmt"
)

func runVerify(ctx context.Context, env *cliEnv, args []string) error {
	var asJSON bool
	image, c, cleanup, err := imageCommand(env, "verify", "Downloads every streaming artifact of IMAGE and checks that each layer decompresses to exactly\nthe original layer (its diff_id), that its TOC matches, and that the tag's binding is intact.", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	})
	if err != nil {
		return err
	}
	defer cleanup()
	audits, verr := c.Verify(ctx, image)
	if asJSON && audits != nil {
		if err := writeJSON(env.stdout, audits); err != nil {
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
