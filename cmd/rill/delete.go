package main

import (
	"context"
	"flag"
	"fmt"
)

func runDelete(ctx context.Context, env *cliEnv, args []string) error {
	var streamingOnly bool
	image, c, cleanup, err := imageCommand(env, "delete", "Deletes IMAGE (its tag, index and platform manifests) together with its streaming artifacts.\nBlobs are left to the registry's garbage collection.", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&streamingOnly, "streaming-only", false, "delete only the streaming artifacts; the tag is put back to the original image")
	})
	if err != nil {
		return err
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
