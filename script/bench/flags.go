package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// config is what the command line asks for.
type config struct {
	workloads []string
	modes     []string
	runs      int
	out       string
	cacheDir  string
	quick     bool
	buildOnly bool
	// The link: rate in bits per second and round-trip time; noLink pulls from the registry
	// directly.
	bandwidth float64
	rtt       time.Duration
	noLink    bool
	// profiles are prefetch profiles given on the command line, by workload.
	profiles map[string]string
	peer     *peerConfig
	// stargzBin is a prebuilt stargz-snapshotter daemon for the stargz modes (default: build
	// script/bench/stargz).
	stargzBin string
	// settle bounds the wait, after the container is ready, for the link to fall quiet (the
	// background fetch to end) before the total bytes are read.
	settle  time.Duration
	timeout time.Duration // of one run
}

// Mode names.
const (
	modeFull        = "full"
	modeRill        = "rill"
	modeRillProfile = "rill-profile"
	modePeer        = "peer"
	modeFleet       = "fleet"
	modeStargz      = "stargz"
	modeStargzOpt   = "stargz-opt"
)

func knownModes() []string {
	return []string{modeFull, modeStargz, modeStargzOpt, modeRill, modeRillProfile, modeFleet, modePeer}
}

// defaultModes are the modes run when --modes is not given: stargz-snapshotter beside rill,
// except in --quick (the smoke test stays as fast as it was; --modes adds them).
func defaultModes(quick bool) []string {
	if quick {
		return []string{modeFull, modeRill, modeRillProfile, modeFleet}
	}
	return []string{modeFull, modeStargz, modeStargzOpt, modeRill, modeRillProfile, modeFleet}
}

type listFlag struct{ list *[]string }

func (f listFlag) String() string {
	if f.list == nil {
		return ""
	}
	return strings.Join(*f.list, ",")
}

func (f listFlag) Set(s string) error {
	*f.list = nil
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*f.list = append(*f.list, v)
		}
	}
	return nil
}

type profileFlag map[string]string

func (f profileFlag) String() string { return "" }

func (f profileFlag) Set(s string) error {
	w, file, ok := strings.Cut(s, "=")
	if !ok || w == "" || file == "" {
		return fmt.Errorf("want WORKLOAD=FILE, got %q", s)
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	f[w] = abs
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{profiles: map[string]string{}}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var mbit float64
	var peer peerFlags
	fs.Var(listFlag{&cfg.workloads}, "workloads", "comma-separated workloads: "+strings.Join(workloadNames(), ", ")+" (default all; --quick: bigfile,smallfiles)")
	fs.Var(listFlag{&cfg.modes}, "modes", "comma-separated modes: "+strings.Join(knownModes(), ", ")+" (default: all but peer, and peer when --peer-bin is given; --quick: full, rill, rill-profile, fleet)")
	fs.IntVar(&cfg.runs, "runs", 3, "cold runs of each workload and mode")
	fs.StringVar(&cfg.out, "out", "bench-out", "directory for results.csv, runs.csv and time-to-ready.png")
	fs.StringVar(&cfg.cacheDir, "cache", "/var/cache/rill-bench", "where built workloads are kept between runs")
	fs.BoolVar(&cfg.quick, "quick", false, "small workloads and 1 run (unless --runs is given): a smoke test")
	fs.BoolVar(&cfg.buildOnly, "build-only", false, "build (and cache) the workloads, then stop")
	fs.Float64Var(&mbit, "bandwidth", 100, "link rate in Mbit/s, each direction, shared by all connections")
	fs.DurationVar(&cfg.rtt, "rtt", 20*time.Millisecond, "link round-trip time")
	fs.BoolVar(&cfg.noLink, "no-link", false, "pull from the registry directly, on loopback")
	fs.Var(profileFlag(cfg.profiles), "profile", "WORKLOAD=FILE: the prefetch profile for rill-profile (paths, one a line); repeatable. Default: record one with rill-snapshotter in a cold run of the rill mode first")
	fs.DurationVar(&cfg.settle, "settle", 2*time.Minute, "after ready, wait at most this long for the link to fall quiet before counting total bytes")
	fs.DurationVar(&cfg.timeout, "run-timeout", 20*time.Minute, "bound of one run")
	fs.StringVar(&cfg.stargzBin, "stargz-bin", "", "stargz-snapshotter daemon for the stargz modes, taking -root and -address (default: build script/bench/stargz, stargz-snapshotter v0.18.2, into --cache)")
	peer.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected arguments %q", fs.Args())
		fmt.Fprintln(stderr, err)
		return nil, err
	}
	explicitRuns := false
	fs.Visit(func(f *flag.Flag) { explicitRuns = explicitRuns || f.Name == "runs" })
	if cfg.quick && !explicitRuns {
		cfg.runs = 1
	}
	if len(cfg.workloads) == 0 {
		cfg.workloads = workloadNames()
		if cfg.quick {
			cfg.workloads = []string{"bigfile", "smallfiles"}
		}
	}
	var err error
	if cfg.peer, err = peer.config(); err != nil {
		fmt.Fprintln(stderr, err)
		return nil, err
	}
	if len(cfg.modes) == 0 {
		cfg.modes = defaultModes(cfg.quick)
		if cfg.peer != nil {
			cfg.modes = append(cfg.modes, modePeer)
		}
	}
	if cfg.stargzBin != "" {
		if cfg.stargzBin, err = exec.LookPath(cfg.stargzBin); err != nil {
			err = fmt.Errorf("--stargz-bin: %w", err)
			fmt.Fprintln(stderr, err)
			return nil, err
		}
		if cfg.stargzBin, err = filepath.Abs(cfg.stargzBin); err != nil {
			return nil, err
		}
	}
	cfg.bandwidth = mbit * 1e6
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(stderr, err)
		return nil, err
	}
	return cfg, nil
}

func (c *config) validate() error {
	var errs []error
	for _, w := range c.workloads {
		if !slices.Contains(workloadNames(), w) {
			errs = append(errs, fmt.Errorf("--workloads: unknown workload %q (known: %s)", w, strings.Join(workloadNames(), ", ")))
		}
	}
	for _, m := range c.modes {
		if !slices.Contains(knownModes(), m) {
			errs = append(errs, fmt.Errorf("--modes: unknown mode %q (known: %s)", m, strings.Join(knownModes(), ", ")))
		}
	}
	if slices.Contains(c.modes, modePeer) && c.peer == nil {
		errs = append(errs, errors.New("--modes peer needs --peer-bin, --peer-socket and --peer-image"))
	}
	if c.peer != nil && c.peer.name == stargzName && (slices.Contains(c.modes, modeStargz) || slices.Contains(c.modes, modeStargzOpt)) {
		errs = append(errs, fmt.Errorf("--peer-name %q is the stargz modes' snapshotter: choose another", stargzName))
	}
	for w := range c.profiles {
		if !slices.Contains(workloadNames(), w) {
			errs = append(errs, fmt.Errorf("--profile: unknown workload %q", w))
		}
	}
	if c.runs < 1 {
		errs = append(errs, errors.New("--runs must be at least 1"))
	}
	if c.bandwidth <= 0 && !c.noLink {
		errs = append(errs, errors.New("--bandwidth must be positive"))
	}
	return errors.Join(errs...)
}
