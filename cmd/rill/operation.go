package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rillstream/rill/convert/operation"
	"github.com/rillstream/rill/convert/watch"
)

func runOperation(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rill operation", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var (
		addr   string
		asJSON bool
	)
	fs.StringVar(&addr, "watcher", watch.DefaultAPIAddress, "the watcher's local API (unix:///path or http://127.0.0.1:PORT, as given to rill watch --api)")
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill operation list | show ID | cancel ID [flags]\n\nShows and cancels the operations of rill watch.\n\n")
		fs.PrintDefaults()
	}
	if len(args) == 0 || (args[0] != "list" && args[0] != "show" && args[0] != "cancel") {
		fs.Usage()
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return fmt.Errorf("name an action: list, show ID or cancel ID: %w", errUsage)
	}
	action := args[0]
	var id string
	if action == "list" {
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errUsage)
		}
	} else {
		var err error
		if id, err = parseOne(fs, args[1:], "operation ID"); err != nil {
			return err
		}
	}
	c, err := watch.NewClient(addr)
	if err != nil {
		return fmt.Errorf("--watcher: %w: %w", err, errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var out any
	switch action {
	case "list":
		ops, err := c.List(ctx)
		if err != nil {
			return err
		}
		if !asJSON {
			return printOperations(env, ops)
		}
		out = ops
	case "show", "cancel":
		var op operation.Operation
		if action == "show" {
			op, err = c.Get(ctx, id)
		} else {
			op, err = c.Cancel(ctx, id)
		}
		if err != nil {
			return err
		}
		if !asJSON {
			printOperation(env, op)
			return nil
		}
		out = op
	}
	return writeJSON(env.stdout, out)
}

func printOperations(env *cliEnv, ops []operation.Operation) error {
	tw := tabwriter.NewWriter(env.stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tIMAGE\tDIGEST\tSTATE\tATTEMPTS\tUPDATED\tDETAIL")
	for _, op := range ops {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", op.ID, op.Image(), short(op.Digest.Encoded()), op.State, op.Attempts,
			op.Updated.Local().Format(time.DateTime), detail(op))
	}
	return tw.Flush()
}

func printOperation(env *cliEnv, op operation.Operation) {
	image := op.Image()
	if op.Tag != "" {
		image += "@" + op.Digest.String()
	}
	fmt.Fprintf(env.stdout, "operation %s\n  image:    %s\n  trigger:  %s\n  state:    %s\n  attempts: %d\n  created:  %s\n",
		op.ID, image, op.Trigger, op.State, op.Attempts, op.Created.Local().Format(time.DateTime))
	if c := op.Create; c != nil {
		fmt.Fprintf(env.stdout, "  options:  %s\n", createChoices(*c))
	}
	if d := detail(op); d != "" {
		fmt.Fprintf(env.stdout, "  detail:   %s\n", d)
	}
	if !op.Finished.IsZero() {
		fmt.Fprintf(env.stdout, "  finished: %s\n", op.Finished.Local().Format(time.DateTime))
	}
}

// detail is the progress of a running operation, else its message.
func detail(op operation.Operation) string {
	if p := op.Progress; op.State == operation.Running && p != nil && p.Layers > 0 {
		return fmt.Sprintf("%s: %d/%d layers, %s of %s read", p.Phase, p.LayersDone, p.Layers, mb(p.BytesRead), mb(p.Bytes))
	}
	if op.State == operation.NotStarted && !op.NextAttempt.IsZero() {
		return fmt.Sprintf("%s (next attempt at %s)", op.Message, op.NextAttempt.Local().Format(time.TimeOnly))
	}
	return op.Message
}

// createChoices describes an operator's create options, as rill create's flags.
func createChoices(c operation.CreateSpec) string {
	var out []string
	if c.Force {
		out = append(out, "--force")
	}
	if c.NoBind {
		out = append(out, "--no-bind")
	}
	if len(c.Profile) > 0 {
		out = append(out, fmt.Sprintf("--prefetch-profile (%d paths)", len(c.Profile)))
	}
	if len(c.Platforms) > 0 {
		out = append(out, "--platform "+strings.Join(c.Platforms, ","))
	}
	if c.ChunkSize != 0 {
		out = append(out, fmt.Sprintf("--chunk-size %d", c.ChunkSize))
	}
	if c.CompressionLevel != 0 {
		out = append(out, fmt.Sprintf("--compression-level %d", c.CompressionLevel))
	}
	if c.VerifyChunks {
		out = append(out, "--verify-chunks")
	}
	if len(out) == 0 {
		return "(the watcher's defaults)"
	}
	return strings.Join(out, " ")
}
