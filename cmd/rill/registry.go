package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/distribution/reference"
	"github.com/sirupsen/logrus"

	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/remote"
)

// registryFlags are the flags every command has: how to reach the registry.
type registryFlags struct {
	plainHTTP    bool
	insecure     bool
	hostsDir     string
	dockerConfig string
	debug        bool

	// Set by clients.
	log *logrus.Logger
}

func (f *registryFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.plainHTTP, "plain-http", false, "use plain HTTP for registries without hosts.toml configuration")
	fs.BoolVar(&f.insecure, "insecure", false, "do not verify the registry's TLS certificate")
	fs.StringVar(&f.hostsDir, "hosts-dir", remote.DefaultHostsDir, "containerd's certs.d directory with HOST/hosts.toml (mirrors, TLS)")
	fs.StringVar(&f.dockerConfig, "docker-config", "", "Docker config.json with credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json)")
	fs.BoolVar(&f.debug, "debug", false, "log every registry request")
}

// converter builds the registry client and converter for image (whose host --insecure
// applies to). cleanup removes what --insecure wrote.
func (f *registryFlags) converter(env *cliEnv, image string, opts ...convert.Option) (*convert.Converter, func(), error) {
	_, c, cleanup, err := f.clients(env, image, opts...)
	return c, cleanup, err
}

// clients builds the registry client and a converter over it (see converter).
func (f *registryFlags) clients(env *cliEnv, image string, opts ...convert.Option) (_ *remote.Registry, _ *convert.Converter, cleanup func(), err error) {
	cleanup = func() {}
	log := logrus.New()
	log.SetOutput(env.stderr)
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: false, FullTimestamp: true})
	// containerd's libraries log through logrus's standard logger: quiet unless --debug.
	logrus.SetOutput(env.stderr)
	logrus.SetLevel(logrus.WarnLevel)
	if f.debug {
		log.SetLevel(logrus.DebugLevel)
		logrus.SetLevel(logrus.DebugLevel)
	}
	hostsDir := f.hostsDir
	if f.insecure {
		named, err := reference.ParseNormalizedNamed(image)
		if err == nil {
			if hostsDir, err = insecureHostsDir(reference.Domain(named), f.plainHTTP); err != nil {
				return nil, nil, cleanup, err
			}
			cleanup = func() { os.RemoveAll(hostsDir) }
		}
	}
	creds := remote.DockerConfig(f.dockerConfig)
	ropts := []remote.Option{remote.WithHostsDir(hostsDir), remote.WithCredentials(creds), remote.WithUserAgent("rill")}
	if f.plainHTTP {
		ropts = append(ropts, remote.WithDefaultScheme("http"))
	}
	reg, err := remote.New(ropts...)
	if err != nil {
		cleanup()
		return nil, nil, func() {}, err
	}
	c, err := convert.New(reg, append([]convert.Option{convert.WithLogger(logrus.NewEntry(log))}, opts...)...)
	if err != nil {
		cleanup()
		return nil, nil, func() {}, err
	}
	f.log = log
	return reg, c, cleanup, nil
}

// insecureHostsDir writes a certs.d directory that reaches host without verifying its
// certificate (remote takes TLS settings from hosts.toml only).
func insecureHostsDir(host string, plainHTTP bool) (string, error) {
	dir, err := os.MkdirTemp("", "rill-certs.d-")
	if err != nil {
		return "", err
	}
	scheme := "https"
	if plainHTTP {
		scheme = "http"
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  skip_verify = true\n", scheme+"://"+host, scheme+"://"+host)
	if err := os.MkdirAll(filepath.Join(dir, host), 0o700); err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, host, "hosts.toml"), []byte(toml), 0o600)
}

// parseArgs parses a command's flags and its one IMAGE argument (flags may follow it).
func parseArgs(fs *flag.FlagSet, args []string) (string, error) {
	var image string
	for {
		if err := fs.Parse(args); err != nil {
			return "", err
		}
		if fs.NArg() == 0 {
			break
		}
		if image != "" {
			return "", fmt.Errorf("one IMAGE only, got %q and %q: %w", image, fs.Arg(0), errUsage)
		}
		image = fs.Arg(0)
		args = fs.Args()[1:]
	}
	if image == "" {
		return "", fmt.Errorf("name an IMAGE (e.g. registry.example.com/team/app:v1): %w", errUsage)
	}
	if strings.HasPrefix(image, "-") {
		return "", fmt.Errorf("unknown flag %q: %w", image, errUsage)
	}
	if _, err := convert.ParseReference(image); err != nil {
		return "", err
	}
	return image, nil
}

// imageCommand parses the flags and the IMAGE argument of a command that works on one image
// in the registry (show, verify, delete) and returns a Converter for it; flags adds the
// command's own flags. Close the returned cleanup when done.
func imageCommand(env *cliEnv, name, usage string, args []string, flags func(*flag.FlagSet)) (image string, c *convert.Converter, cleanup func(), err error) {
	fs := flag.NewFlagSet("rill "+name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var rf registryFlags
	rf.register(fs)
	flags(fs)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill %s IMAGE [flags]\n\n%s\n\n", name, usage)
		fs.PrintDefaults()
	}
	if image, err = parseArgs(fs, args); err != nil {
		return "", nil, nil, err
	}
	if c, cleanup, err = rf.converter(env, image); err != nil {
		return "", nil, nil, fmt.Errorf("%w: %w", err, errUsage)
	}
	return image, c, cleanup, nil
}
