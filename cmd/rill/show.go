package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"
)

func runShow(ctx context.Context, env *cliEnv, args []string) error {
	var asJSON bool
	image, c, cleanup, err := imageCommand(env, "show", "Lists IMAGE's platform manifests and their streaming artifacts, the one nodes use first.", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	})
	if err != nil {
		return err
	}
	defer cleanup()
	st, err := c.Show(ctx, image)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(env.stdout, st)
	}
	binding := "not bound (artifacts, if any, are referrers only)"
	if st.Bound {
		binding = "bound: the tag names a binding index"
	}
	fmt.Fprintf(env.stdout, "%s → %s (%s)\n", st.Reference, st.Digest, binding)
	tw := tabwriter.NewWriter(env.stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PLATFORM\tMANIFEST\tARTIFACT\tBOUND\tSIZE\tORIGINAL\tCREATED\tFORMAT\tPROFILE\tSTATUS")
	for _, m := range st.Manifests {
		if len(m.Artifacts) == 0 {
			status := "no artifact"
			if !m.Streaming {
				status = "platform not streamed"
			}
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t%s\n", m.Platform, short(m.Manifest.Digest.Encoded()), status)
		}
		for i, a := range m.Artifacts {
			status := "in use"
			switch {
			case a.Problem != "":
				status = "unusable: " + a.Problem
			case i > 0:
				status = "superseded"
			}
			created := "-"
			if !a.Created.IsZero() {
				created = a.Created.Local().Format(time.DateTime)
			}
			profile := "none"
			if a.ProfileEntries > 0 {
				profile = fmt.Sprintf("%d paths", a.ProfileEntries)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s v%s\t%s\t%s\n", m.Platform, short(m.Manifest.Digest.Encoded()), short(a.Descriptor.Digest.Encoded()),
				a.Bound, mb(a.Size), mb(a.OriginalSize), created, a.Format, a.Version, profile, status)
		}
	}
	return tw.Flush()
}
