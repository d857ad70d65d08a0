package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/platforms"
	units "github.com/docker/go-units"
	"github.com/pelletier/go-toml/v2"
)

// Defaults of the daemon; every one of them can be changed in the config file.
const (
	DefaultPath    = "/etc/rill/config.toml"
	DefaultRoot    = "/var/lib/rill"
	DefaultAddress = "/run/rill/rill.sock"
	// DefaultStatusAddress is where `rill status` finds the daemon by default.
	DefaultStatusAddress = "/run/rill/status.sock"
	DefaultLogLevel      = "info"
	DefaultLogFormat     = "text"
	// DefaultHolderSocket is the fd-holder's socket (fdstore.holder_socket).
	DefaultHolderSocket = "/run/rill/fdstore.sock"
)

// Config is the whole configuration of rill-snapshotter.
type Config struct {
	// Root is the state directory: snapshot metadata and layer directories.
	Root string `toml:"root"`
	// Address is the unix socket the snapshots gRPC API is served on.
	Address string `toml:"address"`
	// StatusAddress is the unix socket serving the state of streamed layers (`rill status`);
	// empty means status.sock beside Address, "none" turns it off.
	StatusAddress string `toml:"status_address"`

	Log         Log         `toml:"log"`
	Metrics     Metrics     `toml:"metrics"`
	Snapshotter Snapshotter `toml:"snapshotter"`
	Streaming   Streaming   `toml:"streaming"`
	Cache       Cache       `toml:"cache"`
	Credentials Credentials `toml:"credentials"`
	// ProfileReports sends the prefetch profiles this node records to the fleet's watcher.
	ProfileReports ProfileReports `toml:"profile_reports"`
	// FDStore keeps the FUSE connections of streamed layers across restarts of the daemon.
	FDStore FDStore `toml:"fdstore"`
}

// FDStore configures where the descriptors of streamed layers' FUSE connections are kept
// while rill-snapshotter restarts, so that running containers keep reading their files.
type FDStore struct {
	// Mode is "auto" (systemd's file-descriptor store when started by systemd with
	// NOTIFY_SOCKET, else the holder), "systemd", "holder" (an fd-holder process started by
	// the daemon in its own session) or "off" (nothing kept: containers lose their streamed
	// files when the daemon stops).
	Mode string `toml:"mode"`
	// HolderSocket is the fd-holder's unix socket; its pid file is HolderSocket+".pid".
	HolderSocket string `toml:"holder_socket"`
}

var fdstoreModes = []string{"auto", "systemd", "holder", "off"}

func (f FDStore) validate(c Config) error {
	if !slices.Contains(fdstoreModes, f.Mode) {
		return fmt.Errorf("fdstore.mode: %q is not one of %s", f.Mode, strings.Join(fdstoreModes, ", "))
	}
	if s := f.HolderSocket; s == "" || !filepath.IsAbs(s) || s == c.Address || s == c.StatusSocket() || s == c.CRISocket() {
		return fmt.Errorf("fdstore.holder_socket: must be an absolute unix socket path other than address, status_address and credentials.cri_address, got %q", s)
	}
	return nil
}

// ProfileReports configures the reports of recorded prefetch profiles to the fleet's
// `rill watch`, which merges the profiles of several nodes into the artifact's profile.
type ProfileReports struct {
	// URL is the watcher's address for nodes (its --listen, "http://watch.example:8900");
	// empty: profiles are not reported.
	URL string `toml:"url"`
	// TokenFile holds the bearer token the watcher expects (its --profile-token-file); read
	// at every report.
	TokenFile string `toml:"token_file"`
	// NodeName names this node in its reports; empty: the host name.
	NodeName string `toml:"node_name"`
}

// Node is NodeName, or the host name when it is empty.
func (p ProfileReports) Node() string {
	if p.NodeName != "" {
		return p.NodeName
	}
	h, _ := os.Hostname()
	return h
}

func (p ProfileReports) validate(recordWindow time.Duration) error {
	if p.URL == "" {
		return nil
	}
	u, err := url.Parse(p.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("profile_reports.url: %q is not an http:// or https:// URL", p.URL)
	}
	if p.TokenFile == "" || !filepath.IsAbs(p.TokenFile) {
		return fmt.Errorf("profile_reports.token_file: an absolute path is required with profile_reports.url, got %q", p.TokenFile)
	}
	if recordWindow <= 0 {
		return errors.New("profile_reports.url: streaming.record_window is 0s, so there is nothing to report")
	}
	return nil
}

// DefaultContainerdAddress is containerd's socket, where the CRI proxy forwards to.
const DefaultContainerdAddress = "/run/containerd/containerd.sock"

// Credentials configures where registry credentials for streamed layers come from besides
// streaming.docker_config: a CRI image-service proxy that captures the credentials kubelet
// passes in PullImage (imagePullSecrets), and kubelet's credential provider plugins.
type Credentials struct {
	// CRIAddress is the unix socket of the CRI image-service proxy (kubelet's
	// --image-service-endpoint); empty: cri.sock beside Address; "none": off.
	CRIAddress string `toml:"cri_address"`
	// ContainerdAddress is containerd's socket, whose CRI the proxy forwards every call to.
	ContainerdAddress string `toml:"containerd_address"`
	// ProviderConfig is kubelet's CredentialProviderConfig file (--image-credential-provider-config);
	// empty: no credential provider plugins.
	ProviderConfig string `toml:"provider_config"`
	// ProviderBinDir is the directory of the plugins (--image-credential-provider-bin-dir).
	ProviderBinDir string `toml:"provider_bin_dir"`
}

// CRISocket is the CRI proxy's socket path, "" when it is off.
func (c Config) CRISocket() string {
	switch c.Credentials.CRIAddress {
	case "none":
		return ""
	case "":
		return filepath.Join(filepath.Dir(c.Address), "cri.sock")
	}
	return c.Credentials.CRIAddress
}

func (c Config) validateCredentials() error {
	cr := c.Credentials
	if s := c.CRISocket(); s != "" && (!filepath.IsAbs(s) || s == c.Address || s == c.StatusSocket()) {
		return fmt.Errorf("credentials.cri_address: must be an absolute unix socket path other than address and status_address, or \"none\", got %q", cr.CRIAddress)
	}
	if cr.ContainerdAddress == "" || !filepath.IsAbs(cr.ContainerdAddress) {
		return fmt.Errorf("credentials.containerd_address: must be an absolute unix socket path, got %q", cr.ContainerdAddress)
	}
	if cr.ProviderConfig != "" && !filepath.IsAbs(cr.ProviderConfig) {
		return fmt.Errorf("credentials.provider_config: %q is not an absolute path", cr.ProviderConfig)
	}
	if cr.ProviderConfig != "" && (cr.ProviderBinDir == "" || !filepath.IsAbs(cr.ProviderBinDir)) {
		return fmt.Errorf("credentials.provider_bin_dir: must be the absolute directory of the plugins of credentials.provider_config, got %q", cr.ProviderBinDir)
	}
	return nil
}

// Cache configures the on-disk cache of streamed layers' data (under root/cache).
type Cache struct {
	// MaxSize bounds the cache ("10GiB", "500MB"; "0" for no bound). Past it the least
	// recently used files of layers not being fetched are evicted.
	MaxSize string `toml:"max_size"`
}

// MaxSizeBytes is MaxSize parsed (Validate has checked it).
func (c Cache) MaxSizeBytes() int64 {
	n, _ := units.RAMInBytes(c.MaxSize)
	return n
}

// Streaming configures which layers are streamed instead of pulled, and how.
type Streaming struct {
	// Enabled turns streaming on; off, every layer is pulled in full.
	Enabled bool `toml:"enabled"`
	// Platforms are the image platforms that stream (os/arch[/variant]); others are pulled.
	Platforms []string `toml:"platforms"`
	// Trust is "bound" (stream artifacts bound to the pulled tag) or "referrers" (also
	// artifacts attached as referrers of the manifest in its repository).
	Trust string `toml:"trust"`
	// ReadTimeout bounds one read of a streamed file; past it the read fails (EIO).
	ReadTimeout string `toml:"read_timeout"`
	// MaxTOCBytes bounds a layer's TOC; a larger one is pulled in full.
	MaxTOCBytes int64 `toml:"max_toc_bytes"`
	// HostsDir is containerd's registry configuration (certs.d/<host>/hosts.toml).
	HostsDir string `toml:"hosts_dir"`
	// DockerConfig is the Docker config.json with registry credentials; empty means
	// $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
	DockerConfig string `toml:"docker_config"`
	// Passthrough lets the kernel read files complete in the cache directly (FUSE
	// passthrough, Linux ≥ 6.9); where the kernel cannot, rill serves them itself.
	Passthrough bool `toml:"passthrough"`
	// BackgroundFetch makes every streamed layer complete in the background, after its
	// prefetch and yielding to reads, and checks a streaming artifact's layer against the
	// original's diff_id once complete.
	BackgroundFetch bool `toml:"background_fetch"`
	// BackgroundDelay is how long after a layer's mount (and its prefetch) the background
	// fetch starts, so that it does not share the link with a container's start.
	BackgroundDelay string `toml:"background_delay"`
	// BackgroundRate caps the background fetch of all layers together, in bytes per second
	// ("20MB"); "0": no cap. Reads and prefetch are never capped.
	BackgroundRate string `toml:"background_rate"`
	// RecordWindow: for this long after an image's layers are mounted, the order in which its
	// files are first opened is recorded and written as a prefetch profile under root/profiles.
	// "0s" turns recording off.
	RecordWindow string `toml:"record_window"`

	// Faults (issue 15). PrepareTimeout bounds the decision for one layer at Prepare (image,
	// footer, TOC); past it the layer is pulled in full and its registry host is skipped for
	// UnhealthyFor. BackgroundRetryMax caps the backoff of a background fetch that failed.
	PrepareTimeout     string `toml:"prepare_timeout"`
	UnhealthyFor       string `toml:"unhealthy_for"`
	BackgroundRetryMax string `toml:"background_retry_max"`
}

// PrepareTimeoutDuration is PrepareTimeout parsed (Validate has checked it).
func (s Streaming) PrepareTimeoutDuration() time.Duration { return mustDuration(s.PrepareTimeout) }

// UnhealthyForDuration is UnhealthyFor parsed (Validate has checked it).
func (s Streaming) UnhealthyForDuration() time.Duration { return mustDuration(s.UnhealthyFor) }

// BackgroundRetryMaxDuration is BackgroundRetryMax parsed (Validate has checked it).
func (s Streaming) BackgroundRetryMaxDuration() time.Duration {
	return mustDuration(s.BackgroundRetryMax)
}

func mustDuration(v string) time.Duration {
	d, _ := time.ParseDuration(v)
	return d
}

// BackgroundDelayDuration is BackgroundDelay parsed (Validate has checked it).
func (s Streaming) BackgroundDelayDuration() time.Duration {
	d, _ := time.ParseDuration(s.BackgroundDelay)
	return d
}

// BackgroundRateBytes is BackgroundRate parsed, in bytes per second (0: no cap).
func (s Streaming) BackgroundRateBytes() int64 {
	n, _ := units.FromHumanSize(s.BackgroundRate)
	return n
}

// RecordWindowDuration is RecordWindow parsed (Validate has checked it).
func (s Streaming) RecordWindowDuration() time.Duration {
	d, _ := time.ParseDuration(s.RecordWindow)
	return d
}

// ReadTimeoutDuration is ReadTimeout parsed (Validate has checked it).
func (s Streaming) ReadTimeoutDuration() time.Duration {
	d, _ := time.ParseDuration(s.ReadTimeout)
	return d
}

// Log configures logging.
type Log struct {
	// Level is one of trace, debug, info, warn, error.
	Level string `toml:"level"`
	// Format is text or json.
	Format string `toml:"format"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Address is the host:port that serves /metrics; empty turns the endpoint off.
	Address string `toml:"address"`
}

// Snapshotter configures the overlay snapshotter that serves every layer.
type Snapshotter struct {
	// AsyncRemove defers the removal of snapshot directories to Cleanup, which containerd's
	// garbage collector calls; Remove then only updates metadata and returns quickly.
	AsyncRemove bool `toml:"async_remove"`
	// MountOptions are extra overlayfs mount options added to every overlay mount.
	MountOptions []string `toml:"mount_options"`
}

// Default returns the configuration used when no file is present.
func Default() Config {
	return Config{
		Root:    DefaultRoot,
		Address: DefaultAddress,
		Log: Log{
			Level:  DefaultLogLevel,
			Format: DefaultLogFormat,
		},
		Snapshotter: Snapshotter{
			AsyncRemove: true,
		},
		Streaming: Streaming{
			Enabled:         true,
			Platforms:       []string{"linux/amd64"},
			Trust:           "bound",
			ReadTimeout:     "30s",
			MaxTOCBytes:     64 << 20,
			HostsDir:        "/etc/containerd/certs.d",
			Passthrough:     true,
			BackgroundFetch: true,
			RecordWindow:    "60s",
			BackgroundRate:  "0",
			BackgroundDelay: "10s",

			PrepareTimeout:     "5s",
			UnhealthyFor:       "1m",
			BackgroundRetryMax: "5m",
		},
		Cache:          Cache{MaxSize: "10GiB"},
		Credentials:    Credentials{ContainerdAddress: DefaultContainerdAddress},
		ProfileReports: ProfileReports{TokenFile: "/etc/rill/profile-token"},
		FDStore:        FDStore{Mode: "auto", HolderSocket: DefaultHolderSocket},
	}
}

// Load reads the file at path over the defaults and validates the result. A missing file is
// an error unless allowMissing is set (the daemon allows it for the default path only, so a
// node without a config file runs on defaults, while a mistyped --config fails).
func Load(path string, allowMissing bool) (Config, error) {
	cfg := Default()
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && allowMissing:
		return cfg, cfg.Validate()
	case err != nil:
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	if err := decode(data, &cfg); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes TOML text over the defaults and validates the result.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	if err := decode(data, &cfg); err != nil {
		return Config{}, err
	}
	return cfg, cfg.Validate()
}

func decode(data []byte, cfg *Config) error {
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(cfg)
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		keys := make([]string, 0, len(strict.Errors))
		for _, e := range strict.Errors {
			keys = append(keys, strings.Join(e.Key(), "."))
		}
		return fmt.Errorf("unknown key %s (see script/config.toml for every key)", strings.Join(keys, ", "))
	}
	var decodeErr *toml.DecodeError
	if errors.As(err, &decodeErr) {
		row, col := decodeErr.Position()
		key := strings.Join(decodeErr.Key(), ".")
		if key != "" {
			return fmt.Errorf("line %d, column %d, key %s: %s", row, col, key, decodeErr.Error())
		}
		return fmt.Errorf("line %d, column %d: %s", row, col, decodeErr.Error())
	}
	if err != nil {
		return err
	}
	return nil
}

var (
	logLevels  = []string{"trace", "debug", "info", "warn", "warning", "error", "fatal", "panic"}
	logFormats = []string{"text", "json"}
)

// Validate checks every value and names the key of the first invalid one.
func (c Config) Validate() error {
	if c.Root == "" || !filepath.IsAbs(c.Root) {
		return fmt.Errorf("root: must be an absolute directory path, got %q", c.Root)
	}
	if c.Address == "" || !filepath.IsAbs(c.Address) {
		return fmt.Errorf("address: must be an absolute unix socket path, got %q", c.Address)
	}
	if sa := c.StatusSocket(); sa != "" && (!filepath.IsAbs(sa) || sa == c.Address) {
		return fmt.Errorf("status_address: must be an absolute unix socket path other than address, or \"none\", got %q", c.StatusAddress)
	}
	if !slices.Contains(logLevels, c.Log.Level) {
		return fmt.Errorf("log.level: %q is not one of %s", c.Log.Level, strings.Join(logLevels, ", "))
	}
	if !slices.Contains(logFormats, c.Log.Format) {
		return fmt.Errorf("log.format: %q is not one of %s", c.Log.Format, strings.Join(logFormats, ", "))
	}
	if c.Metrics.Address != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Address); err != nil {
			return fmt.Errorf("metrics.address: %q is not host:port: %w", c.Metrics.Address, err)
		}
	}
	if err := c.Streaming.validate(); err != nil {
		return err
	}
	if err := c.validateCredentials(); err != nil {
		return err
	}
	if err := c.ProfileReports.validate(c.Streaming.RecordWindowDuration()); err != nil {
		return err
	}
	if err := c.FDStore.validate(c); err != nil {
		return err
	}
	if n, err := units.RAMInBytes(c.Cache.MaxSize); err != nil || n < 0 {
		return fmt.Errorf("cache.max_size: %q is not a size like \"10GiB\"", c.Cache.MaxSize)
	}
	for _, o := range c.Snapshotter.MountOptions {
		name, _, _ := strings.Cut(o, "=")
		switch name {
		case "lowerdir", "upperdir", "workdir":
			return fmt.Errorf("snapshotter.mount_options: %q is set by the snapshotter itself", o)
		case "":
			return fmt.Errorf("snapshotter.mount_options: empty option")
		}
	}
	return nil
}

func (s Streaming) validate() error {
	for _, p := range s.Platforms {
		if _, err := platforms.Parse(p); err != nil || p == "" {
			return fmt.Errorf("streaming.platforms: %q is not os/arch[/variant]", p)
		}
	}
	if s.Trust != "bound" && s.Trust != "referrers" {
		return fmt.Errorf("streaming.trust: %q is not \"bound\" or \"referrers\"", s.Trust)
	}
	if d, err := time.ParseDuration(s.ReadTimeout); err != nil || d <= 0 {
		return fmt.Errorf("streaming.read_timeout: %q is not a positive duration like \"30s\"", s.ReadTimeout)
	}
	if d, err := time.ParseDuration(s.RecordWindow); err != nil || d < 0 {
		return fmt.Errorf("streaming.record_window: %q is not a duration like \"60s\" (\"0s\": off)", s.RecordWindow)
	}
	if d, err := time.ParseDuration(s.BackgroundDelay); err != nil || d < 0 {
		return fmt.Errorf("streaming.background_delay: %q is not a duration like \"10s\"", s.BackgroundDelay)
	}
	if n, err := units.FromHumanSize(s.BackgroundRate); err != nil || n < 0 {
		return fmt.Errorf("streaming.background_rate: %q is not bytes per second like \"20MB\" (\"0\": no cap)", s.BackgroundRate)
	}
	for _, k := range []struct{ key, value string }{
		{"prepare_timeout", s.PrepareTimeout}, {"unhealthy_for", s.UnhealthyFor}, {"background_retry_max", s.BackgroundRetryMax},
	} {
		if d, err := time.ParseDuration(k.value); err != nil || d <= 0 {
			return fmt.Errorf("streaming.%s: %q is not a positive duration like \"5s\"", k.key, k.value)
		}
	}
	if s.MaxTOCBytes < 4096 {
		return fmt.Errorf("streaming.max_toc_bytes: %d is below 4096", s.MaxTOCBytes)
	}
	if s.HostsDir != "" && !filepath.IsAbs(s.HostsDir) {
		return fmt.Errorf("streaming.hosts_dir: %q is not an absolute path", s.HostsDir)
	}
	if s.DockerConfig != "" && !filepath.IsAbs(s.DockerConfig) {
		return fmt.Errorf("streaming.docker_config: %q is not an absolute path", s.DockerConfig)
	}
	return nil
}

// StatusSocket is the status socket's path, "" when it is off.
func (c Config) StatusSocket() string {
	switch c.StatusAddress {
	case "none":
		return ""
	case "":
		return filepath.Join(filepath.Dir(c.Address), "status.sock")
	}
	return c.StatusAddress
}
