package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/rillstream/rill/config"
	"github.com/sirupsen/logrus"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command-line flags; a flag that is set overrides the config file.
type options struct {
	configPath string
	address    string
	root       string
	logLevel   string
	logFormat  string
	version    bool
	set        map[string]bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fl := flag.NewFlagSet("rill-snapshotter", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.StringVar(&o.configPath, "config", config.DefaultPath, "config file (TOML); a missing file at the default path means defaults")
	fl.StringVar(&o.address, "address", "", "unix socket to serve the snapshots API on (default "+config.DefaultAddress+")")
	fl.StringVar(&o.root, "root", "", "state directory (default "+config.DefaultRoot+")")
	fl.StringVar(&o.logLevel, "log-level", "", "log level: trace, debug, info, warn, error (default info)")
	fl.StringVar(&o.logFormat, "log-format", "", "log format: text or json (default text)")
	fl.BoolVar(&o.version, "version", false, "print the version and exit")
	fl.Usage = func() {
		fmt.Fprintf(stderr, "Usage: rill-snapshotter [flags]\n\nrill's containerd proxy snapshotter. Flags override the config file.\n\n")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return o, err
	}
	if fl.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (all settings are flags or config keys)", fl.Arg(0))
	}
	o.set = map[string]bool{}
	fl.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	return o, nil
}

// loadConfig reads the config file and applies the flags over it.
func loadConfig(o options) (config.Config, error) {
	cfg, err := config.Load(o.configPath, !o.set["config"])
	if err != nil {
		return config.Config{}, err
	}
	if o.set["address"] {
		cfg.Address = o.address
	}
	if o.set["root"] {
		cfg.Root = o.root
	}
	if o.set["log-level"] {
		cfg.Log.Level = o.logLevel
	}
	if o.set["log-format"] {
		cfg.Log.Format = o.logFormat
	}
	if err := cfg.Validate(); err != nil {
		return config.Config{}, fmt.Errorf("flags: %w", err)
	}
	return cfg, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	if code, ok := runSubcommand(args, stderr); ok {
		return code
	}
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "rill-snapshotter: %v\n", err)
		return 2
	}
	if o.version {
		fmt.Fprintf(stdout, "rill-snapshotter %s\n", version)
		return 0
	}
	cfg, err := loadConfig(o)
	if err != nil {
		fmt.Fprintf(stderr, "rill-snapshotter: %v\n", err)
		return 2
	}
	if err := setupLogging(cfg.Log, stderr); err != nil {
		fmt.Fprintf(stderr, "rill-snapshotter: %v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg); err != nil {
		logrus.WithError(err).Error("rill-snapshotter stopped with an error")
		return 1
	}
	return 0
}

func setupLogging(c config.Log, w io.Writer) error {
	level, err := logrus.ParseLevel(c.Level)
	if err != nil {
		return fmt.Errorf("log.level: %w", err)
	}
	logger := logrus.StandardLogger() // containerd's log.G writes through it too
	logger.SetOutput(w)
	logger.SetLevel(level)
	switch c.Format {
	case "json":
		logger.SetFormatter(&logrus.JSONFormatter{TimestampFormat: "2006-01-02T15:04:05.000000000Z07:00"})
	default:
		logger.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02T15:04:05.000000000Z07:00"})
	}
	return nil
}
