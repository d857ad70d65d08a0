package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is one subcommand: it parses its own flags and runs.
type command struct {
	name, args, summary string
	run                 func(ctx context.Context, env *cliEnv, args []string) error
}

func commands() []command {
	return []command{
		{"create", "IMAGE", "build the streaming artifact of IMAGE, push it and bind it to the tag", runCreate},
		{"show", "IMAGE", "list the streaming artifacts of IMAGE", runShow},
		{"verify", "IMAGE", "check that IMAGE's streaming artifacts hold exactly its layers", runVerify},
		{"delete", "IMAGE", "delete IMAGE and its streaming artifacts (or only the artifacts)", runDelete},
		{"repo", "enable|disable|show REPO", "turn automatic creation for new pushes to REPO on or off", runRepo},
		{"watch", "", "create streaming artifacts for new pushes to enabled repositories (a service)", runWatch},
		{"operation", "list|show|cancel ID", "show or cancel the operations of rill watch", runOperation},
		{"status", "", "show the layers rill-snapshotter streams on this node", runStatus},
		{"pull", "IMAGE", "pull IMAGE into containerd through rill, streaming what it can", runPull},
		{"install-node", "", "install rill on this node and merge its entries into containerd's config", runInstallNode},
		{"doctor", "[IMAGE]", "check this node's setup (and whether IMAGE would stream), with fixes", runDoctor},
		{"why", "[IMAGE]", "list rill-snapshotter's recent stream-or-full-pull decisions and their reasons", runWhy},
	}
}

// cliEnv is what every command writes to.
type cliEnv struct {
	stdout, stderr io.Writer
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	env := &cliEnv{stdout: stdout, stderr: stderr}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, env, args[1:])
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		if err != nil {
			fmt.Fprintf(stderr, "rill %s: %v\n", c.name, err)
			if hint := hintFor(err); hint != "" {
				fmt.Fprintf(stderr, "hint: %s\n", hint)
			}
		}
		return exitCode(err)
	}
	fmt.Fprintf(stderr, "rill: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: rill COMMAND [flags] ARGS\n\nrill stores streaming artifacts of images in their registry.\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %-24s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'rill COMMAND -h' for a command's flags.\n")
}

// hintFor says what an operator can do about an error, when something helps.
func hintFor(err error) string {
	switch exitCode(err) {
	case exitUnauthorized:
		return "log in with 'docker login HOST' (rill reads ~/.docker/config.json or --docker-config), or check the account may push to the repository"
	case exitUnsupportedPlatform:
		return "name the platforms to stream with --platform (e.g. --platform linux/amd64,linux/arm64)"
	case exitNotFound:
		return "check the reference; for a local registry without TLS add --plain-http"
	case exitConflict:
		return "someone pushed to the tag meanwhile; run the command again"
	case exitIsStreaming:
		return "name the original image (its tag), not the artifact"
	case exitUnavailable:
		return "is rill watch running? start it, or point --watcher at the address of its --api"
	}
	return ""
}

// writeJSON writes v to w as indented JSON: what every command's --json prints.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
