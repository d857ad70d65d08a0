package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/operation"
	"github.com/rillstream/rill/convert/policy"
	"github.com/rillstream/rill/convert/watch"
)

func runWatch(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rill watch", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var (
		rf         registryFlags
		registry   string
		listen     string
		api        string
		stateDir   string
		interval   time.Duration
		workers    int
		attempts   int
		policyRepo string
		tokenFile  string
		platforms  = strings.Join(convert.DefaultPlatforms(), ",")
		tempDir    string
		// Fleet profiles.
		profileTokenFile string
		profileCfg       watch.ProfileConfig
	)
	rf.register(fs)
	fs.StringVar(&registry, "registry", "", "the registry to watch, as image references name it (HOST[:PORT]); required")
	fs.StringVar(&listen, "listen", "127.0.0.1:8900", "address for the registry's webhook notifications (POST /events)")
	fs.StringVar(&api, "api", watch.DefaultAPIAddress, "address of the local API for 'rill operation' (unix:///path or http://127.0.0.1:PORT)")
	fs.StringVar(&stateDir, "state-dir", "/var/lib/rill/watch", "where operations are kept across restarts")
	fs.DurationVar(&interval, "reconcile-interval", 5*time.Minute, "time between reconciliations (tags of enabled repositories without an artifact); 0: only at start")
	fs.IntVar(&workers, "workers", 2, "operations run at once")
	fs.IntVar(&attempts, "max-attempts", 5, "attempts per operation before it fails (transient errors are retried with backoff)")
	fs.StringVar(&policyRepo, "policy-repo", policy.DefaultRepository, "repository, on the registry, that holds rill's repository policies")
	fs.StringVar(&tokenFile, "webhook-token-file", "", "file holding a bearer token the registry's notifications must carry")
	fs.StringVar(&platforms, "platform", platforms, "streaming platforms, comma-separated")
	fs.StringVar(&tempDir, "temp-dir", "", "where converted layers are staged before the push (default $TMPDIR)")
	fs.StringVar(&profileTokenFile, "profile-token-file", "", "file holding the bearer token nodes send with their recorded prefetch profiles (POST "+artifact.ProfileReportPath+" on --listen); unset: profiles are not taken")
	fs.IntVar(&profileCfg.MinReports, "profile-min-reports", 3, "nodes' profiles of an artifact that are enough to give it their merged profile")
	fs.DurationVar(&profileCfg.Delay, "profile-delay", 10*time.Minute, "after an artifact's first profile report, fewer than --profile-min-reports (one included) are enough once this is over")
	fs.Float64Var(&profileCfg.MinChange, "profile-min-change", 0.2, "the merged profile replaces the artifact's only when their sets of paths differ by at least this much (Jaccard distance, 0 to 1)")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill watch --registry HOST [flags]\n\nCreates streaming artifacts for new pushes to the repositories enabled with 'rill repo enable':\nreceives the registry's webhook notifications and reconciles periodically. Point the\nregistry's notifications.endpoints at http://LISTEN/events.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errUsage)
	}
	if registry == "" || strings.Contains(registry, "/") {
		return fmt.Errorf("--registry HOST[:PORT] is required: %w", errUsage)
	}
	ps, err := convert.ParsePlatforms(strings.Split(platforms, ","))
	if err != nil {
		return fmt.Errorf("--platform: %w: %w", err, errUsage)
	}
	var token string
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return fmt.Errorf("--webhook-token-file: %w: %w", err, errUsage)
		}
		token = strings.TrimSpace(string(b))
	}
	if profileTokenFile != "" {
		b, err := os.ReadFile(profileTokenFile)
		if err != nil {
			return fmt.Errorf("--profile-token-file: %w: %w", err, errUsage)
		}
		if profileCfg.Token = strings.TrimSpace(string(b)); profileCfg.Token == "" {
			return fmt.Errorf("--profile-token-file %s is empty: %w", profileTokenFile, errUsage)
		}
	}
	if profileCfg.MinReports < 1 || profileCfg.Delay <= 0 || profileCfg.MinChange <= 0 || profileCfg.MinChange > 1 {
		return fmt.Errorf("--profile-min-reports must be at least 1, --profile-delay positive, --profile-min-change in (0, 1]: %w", errUsage)
	}
	copts := []convert.Option{convert.WithPlatforms(ps...)}
	if tempDir != "" {
		copts = append(copts, convert.WithTempDir(tempDir))
	}
	reg, c, cleanup, err := rf.clients(env, registry+"/x", copts...)
	if err != nil {
		return fmt.Errorf("%w: %w", err, errUsage)
	}
	defer cleanup()
	if !rf.debug {
		rf.log.SetLevel(logrus.InfoLevel)
	}
	log := logrus.NewEntry(rf.log).WithField("component", "watch")
	store, err := policy.New(reg, c, policy.WithRepository(policyRepo))
	if err != nil {
		return fmt.Errorf("%w: %w", err, errUsage)
	}
	w, err := watch.New(watch.Config{
		Registry: registry,
		Remote:   reg,
		NewConverter: func(progress func(convert.Progress), extra ...convert.Option) (*convert.Converter, error) {
			opts := append([]convert.Option{convert.WithLogger(log)}, copts...)
			if progress != nil {
				opts = append(opts, convert.WithProgress(progress))
			}
			return convert.New(reg, append(opts, extra...)...)
		},
		Policies:          store,
		StateDir:          stateDir,
		ReconcileInterval: interval,
		WebhookToken:      token,
		Profiles:          profileCfg,
		Queue:             []operation.Option{operation.WithWorkers(workers), operation.WithRetry(attempts, 2*time.Second, 2*time.Minute)},
		Log:               log,
	})
	if err != nil {
		return err
	}

	hookL, err := watch.Listen(listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	apiL, err := watch.Listen(api)
	if err != nil {
		hookL.Close()
		return fmt.Errorf("--api: %w", err)
	}
	hooks := http.NewServeMux()
	hooks.Handle("/events", w.WebhookHandler())
	hooks.Handle(artifact.ProfileReportPath, w.ProfileHandler())
	servers := []*http.Server{
		{Handler: hooks, ReadHeaderTimeout: 10 * time.Second},
		{Handler: w.APIHandler(), ReadHeaderTimeout: 10 * time.Second},
	}
	log.WithFields(logrus.Fields{"registry": registry, "webhook": "http://" + hookL.Addr().String() + "/events", "api": api, "state_dir": stateDir}).Info("rill watch serving")

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		wg   sync.WaitGroup
		errs = make([]error, 2)
	)
	for i, l := range []net.Listener{hookL, apiL} {
		wg.Go(func() {
			if err := servers[i].Serve(l); !errors.Is(err, http.ErrServerClosed) {
				errs[i] = err
				stop()
			}
		})
	}
	wg.Go(func() { w.Run(ctx) })
	<-ctx.Done()
	log.Info("rill watch stopping")
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(shutdown)
	}
	wg.Wait()
	if strings.HasPrefix(api, "unix://") {
		os.Remove(strings.TrimPrefix(api, "unix://"))
	}
	return errors.Join(errs...)
}
