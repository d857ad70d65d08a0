package remote

import (
	"time"
)

// DefaultHostsDir is where containerd reads registry host configuration (hosts.toml) from.
const DefaultHostsDir = "/etc/containerd/certs.d"

// Option changes one setting of a Registry.
type Option func(*options)

type options struct {
	hostsDir           string
	credentials        Credentials
	keychain           Keychain
	metrics            *Metrics
	requestTimeout     time.Duration
	maxAttempts        int
	backoffBase        time.Duration
	backoffMax         time.Duration
	maxRetryAfter      time.Duration
	maxConcurrency     int
	bulkConcurrency    int
	coalesceGap        int64
	maxRangesPerReq    int
	maxManifestSize    int64
	maxBlobSize        int64
	redirectMaxAge     time.Duration
	defaultScheme      string
	userAgent          string
	credentialsTimeout time.Duration
	hostsRecheck       time.Duration
}

// defaults are the settings of a Registry that no option changed: the one place they live.
func defaults() options {
	return options{
		hostsDir:           DefaultHostsDir,
		credentials:        DockerConfig(""),
		requestTimeout:     60 * time.Second,
		maxAttempts:        5,
		backoffBase:        100 * time.Millisecond,
		backoffMax:         2 * time.Second,
		maxRetryAfter:      30 * time.Second,
		maxConcurrency:     8,
		bulkConcurrency:    4,
		coalesceGap:        16 << 10,
		maxRangesPerReq:    32,
		maxManifestSize:    4 << 20,
		maxBlobSize:        16 << 20,
		redirectMaxAge:     10 * time.Minute,
		userAgent:          "rill",
		credentialsTimeout: 10 * time.Second,
		hostsRecheck:       5 * time.Second,
	}
}

// WithHostsDir sets the certs.d directory holding <host>/hosts.toml files
// (default [DefaultHostsDir], the directory containerd uses). A missing directory means
// defaults: https, or plain http for localhost with a port, as containerd does.
func WithHostsDir(dir string) Option { return func(o *options) { o.hostsDir = dir } }

// WithCredentials sets where credentials come from (default: Docker's config.json, see
// [DockerConfig]). Use [ChainCredentials] to add sources in front of it.
func WithCredentials(c Credentials) Option { return func(o *options) { o.credentials = c } }

// WithKeychain sets a source of credentials per repository that hears which credentials the
// registry refused; it replaces [WithCredentials].
func WithKeychain(k Keychain) Option { return func(o *options) { o.keychain = k } }

// WithMetrics makes the Registry count into m; the caller registers m.Collectors().
func WithMetrics(m *Metrics) Option { return func(o *options) { o.metrics = m } }

// WithRequestTimeout bounds one logical request, all its retries included (default 60s).
// Pushes of blobs are bounded by the caller's context only.
func WithRequestTimeout(d time.Duration) Option { return func(o *options) { o.requestTimeout = d } }

// WithRetry sets the attempts per request (including the first) and the exponential backoff
// between them: base doubles per retry up to max, with jitter (defaults 5, 100ms, 2s).
func WithRetry(attempts int, base, max time.Duration) Option {
	return func(o *options) { o.maxAttempts, o.backoffBase, o.backoffMax = attempts, base, max }
}

// WithMaxRetryAfter caps how long a Retry-After header may make a request wait (default 30s);
// a longer demand fails the request at once.
func WithMaxRetryAfter(d time.Duration) Option { return func(o *options) { o.maxRetryAfter = d } }

// WithMaxConcurrency limits the on-demand requests in flight to one network host (default
// 8): reads something is blocked on, and every request whose context carries no
// [WithPriority]. These slots are theirs alone: prefetch and background requests have their
// own (see [WithBulkConcurrency]), so an on-demand request never waits for a slot held by
// them. A host therefore sees at most n plus the bulk limit requests at once.
func WithMaxConcurrency(n int) Option { return func(o *options) { o.maxConcurrency = n } }

// WithBulkConcurrency limits the prefetch and background requests in flight to one network
// host, together (default 4), in slots of their own beside the on-demand ones. A freed slot
// goes to the oldest waiting prefetch request, else to the oldest waiting background request.
// Few bulk requests keep a saturated link fair to reads (an on-demand request shares the
// bandwidth with every bulk transfer in flight), yet enough that a prefetch of many small,
// scattered ranges keeps the link busy across round trips.
func WithBulkConcurrency(n int) Option { return func(o *options) { o.bulkConcurrency = n } }

// WithCoalesceGap merges ranges whose gap is at most gap bytes into one span (default 16 KiB):
// fetching the gap is cheaper than another part or request.
func WithCoalesceGap(gap int64) Option { return func(o *options) { o.coalesceGap = gap } }

// WithMaxRangesPerRequest limits the spans of one multi-range request (default 32).
func WithMaxRangesPerRequest(n int) Option { return func(o *options) { o.maxRangesPerReq = n } }

// WithMaxManifestSize limits manifests and indexes (default 4 MiB).
func WithMaxManifestSize(n int64) Option { return func(o *options) { o.maxManifestSize = n } }

// WithMaxBlobSize limits blobs read whole by FetchBlob, such as configs (default 16 MiB).
func WithMaxBlobSize(n int64) Option { return func(o *options) { o.maxBlobSize = n } }

// WithRedirectMaxAge sets how long a discovered blob URL (the registry's redirect target) is
// used before it is discovered again (default 10 minutes); a 401, 403 or 404 from it, or a
// failure, drops it sooner.
func WithRedirectMaxAge(d time.Duration) Option { return func(o *options) { o.redirectMaxAge = d } }

// WithDefaultScheme sets the scheme of hosts without configuration ("https" unless localhost,
// as in containerd).
func WithDefaultScheme(s string) Option { return func(o *options) { o.defaultScheme = s } }

// WithUserAgent sets the User-Agent header (default "rill").
func WithUserAgent(ua string) Option { return func(o *options) { o.userAgent = ua } }
