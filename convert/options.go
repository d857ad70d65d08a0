package convert

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

// DefaultPlatforms returns the streaming platforms used when none are configured.
func DefaultPlatforms() []string { return []string{"linux/amd64"} }

// Option changes one setting of a Converter.
type Option func(*options)

type options struct {
	platforms   []ocispec.Platform
	layer       LayerOptions
	parallelism int
	tempDir     string
	progress    func(Progress)
	log         *logrus.Entry
	now         func() time.Time
	// verifyChunks makes Create check every chunk of every converted layer.
	verifyChunks bool
}

func defaults() options {
	ps, _ := parsePlatforms(DefaultPlatforms())
	return options{
		platforms:   ps,
		parallelism: min(4, max(1, runtime.GOMAXPROCS(0))),
		tempDir:     os.TempDir(),
		progress:    func(Progress) {},
		log:         logrus.NewEntry(logrus.StandardLogger()),
		now:         time.Now,
	}
}

// WithPlatforms sets the streaming platforms ("linux/amd64", "linux/arm64/v8"): only
// manifests of these platforms get artifacts (default linux/amd64).
func WithPlatforms(ps ...ocispec.Platform) Option {
	return func(o *options) { o.platforms = append([]ocispec.Platform(nil), ps...) }
}

// WithLayerOptions sets the chunk size and compression level of converted layers.
func WithLayerOptions(l LayerOptions) Option { return func(o *options) { o.layer = l } }

// WithParallelism sets how many layers are converted at once (default the number of CPUs,
// at most 4). Each needs a chunk of memory and a temporary file as large as its result.
func WithParallelism(n int) Option { return func(o *options) { o.parallelism = n } }

// WithTempDir sets where converted layers are staged before they are pushed (default
// os.TempDir()).
func WithTempDir(dir string) Option { return func(o *options) { o.tempDir = dir } }

// WithProgress receives a Progress event at every step of every layer. It is called from
// several goroutines, one call at a time per layer.
func WithProgress(f func(Progress)) Option { return func(o *options) { o.progress = f } }

// WithChunkVerification makes Create check each converted layer in full before pushing it
// (VerifyLayer: every chunk through the TOC), not only its TOC and its decompressed bytes.
// It more than doubles the conversion time.
func WithChunkVerification(on bool) Option { return func(o *options) { o.verifyChunks = on } }

// WithLogger sets where the converter logs (default logrus's standard logger).
func WithLogger(l *logrus.Entry) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock that dates artifacts (for tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// ParsePlatforms parses platform specifiers ("linux/amd64", "linux/arm64/v8").
func ParsePlatforms(specs []string) ([]ocispec.Platform, error) { return parsePlatforms(specs) }

func parsePlatforms(specs []string) ([]ocispec.Platform, error) {
	out := make([]ocispec.Platform, 0, len(specs))
	for _, s := range specs {
		p, err := platforms.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", s, err)
		}
		out = append(out, platforms.Normalize(p))
	}
	return out, nil
}

func (o options) validate() error {
	if len(o.platforms) == 0 {
		return errors.New("convert: no streaming platforms")
	}
	if o.parallelism < 1 {
		return errors.New("convert: parallelism must be at least 1")
	}
	if _, err := o.layer.withDefaults(); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return nil
}

// matcher matches the streaming platforms exactly (no fallback from arm64 to arm, or from
// amd64 variants: a node streams only what it was configured for).
func (o options) matcher() platforms.MatchComparer {
	ms := make([]platforms.MatchComparer, 0, len(o.platforms))
	for _, p := range o.platforms {
		ms = append(ms, platforms.OnlyStrict(p))
	}
	return anyOf(ms)
}

type anyOf []platforms.MatchComparer

func (a anyOf) Match(p ocispec.Platform) bool {
	for _, m := range a {
		if m.Match(p) {
			return true
		}
	}
	return false
}

func (a anyOf) Less(p1, p2 ocispec.Platform) bool {
	for _, m := range a {
		if m.Match(p1) || m.Match(p2) {
			return m.Less(p1, p2)
		}
	}
	return false
}

var _ platforms.MatchComparer = anyOf(nil)
