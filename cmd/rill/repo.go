package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/rillstream/rill/convert/policy"
)

func runRepo(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rill repo", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var (
		rf         registryFlags
		policyRepo string
		asJSON     bool
	)
	rf.register(fs)
	fs.StringVar(&policyRepo, "policy-repo", policy.DefaultRepository, "repository, on the same registry, that holds rill's repository policies")
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill repo enable|disable|show REPO [flags]\n\nTurns automatic creation of streaming artifacts for new pushes to REPO on or off (rill watch\ndoes the work), or shows whether it is on. Disabling keeps the artifacts that exist. The\npolicy is stored in the registry (in --policy-repo), so every watcher shares it.\n\n")
		fs.PrintDefaults()
	}
	if len(args) == 0 || (args[0] != "enable" && args[0] != "disable" && args[0] != "show") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fs.Usage()
			return flag.ErrHelp
		}
		fs.Usage()
		return fmt.Errorf("name an action: enable, disable or show: %w", errUsage)
	}
	action := args[0]
	repo, err := parseOne(fs, args[1:], "REPO")
	if err != nil {
		return err
	}
	name, err := policy.ParseRepository(repo)
	if err != nil {
		return fmt.Errorf("%w: %w", err, errUsage)
	}
	reg, c, cleanup, err := rf.clients(env, name)
	if err != nil {
		return fmt.Errorf("%w: %w", err, errUsage)
	}
	defer cleanup()
	store, err := policy.New(reg, c, policy.WithRepository(policyRepo))
	if err != nil {
		return fmt.Errorf("%w: %w", err, errUsage)
	}
	var p policy.Policy
	switch action {
	case "show":
		p, err = store.Get(ctx, name)
	default:
		p, err = store.Set(ctx, name, action == "enable")
	}
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(env.stdout, p)
	}
	state := "disabled: new pushes are not converted automatically"
	if p.Enabled {
		state = "enabled: rill watch creates streaming artifacts for new pushes"
	}
	fmt.Fprintf(env.stdout, "%s: %s\n", p.Repository, state)
	if !p.Updated.IsZero() {
		fmt.Fprintf(env.stdout, "set by %s at %s\n", p.UpdatedBy, p.Updated.Local().Format(time.DateTime))
	}
	if action != "show" && p.Enabled != (action == "enable") {
		return fmt.Errorf("another writer changed the policy of %s at the same time; it is now %v", p.Repository, p.Enabled)
	}
	return nil
}

// parseOne parses a command's flags and its one positional argument, named what.
func parseOne(fs *flag.FlagSet, args []string, what string) (string, error) {
	var arg string
	for {
		if err := fs.Parse(args); err != nil {
			return "", err
		}
		if fs.NArg() == 0 {
			break
		}
		if arg != "" {
			return "", fmt.Errorf("one %s only, got %q and %q: %w", what, arg, fs.Arg(0), errUsage)
		}
		arg = fs.Arg(0)
		args = fs.Args()[1:]
	}
	if arg == "" {
		return "", fmt.Errorf("name a %s: %w", what, errUsage)
	}
	return arg, nil
}
