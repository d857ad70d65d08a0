package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/remote"
)

// labelRemote marks a snapshot that rill streams (set by rill-snapshotter).
const labelRemote = "dev.rill.remote.blob"

func runPull(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("rill pull", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var (
		address     string
		namespace   string
		platform    string
		snapshotter string
		hostsDir    string
		plainHTTP   bool
		dockerCfg   string
	)
	fs.StringVar(&address, "address", "/run/containerd/containerd.sock", "containerd's socket")
	fs.StringVar(&namespace, "namespace", "k8s.io", "containerd namespace (k8s.io is the one CRI uses)")
	fs.StringVar(&platform, "platform", platforms.Format(platforms.DefaultSpec()), "platform to pull")
	fs.StringVar(&snapshotter, "snapshotter", "rill", "containerd snapshotter to unpack into")
	fs.StringVar(&hostsDir, "hosts-dir", remote.DefaultHostsDir, "containerd's certs.d directory with HOST/hosts.toml")
	fs.BoolVar(&plainHTTP, "plain-http", false, "use plain HTTP for registries without hosts.toml configuration")
	fs.StringVar(&dockerCfg, "docker-config", "", "Docker config.json with credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json)")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill pull IMAGE [flags]\n\nPulls IMAGE into containerd through rill, with the labels that let rill stream its layers\n(as CRI pulls do), for ctr and scripts that do not go through CRI.\n\n")
		fs.PrintDefaults()
	}
	image, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	p, err := platforms.Parse(platform)
	if err != nil {
		return fmt.Errorf("--platform: %w: %w", err, errUsage)
	}
	client, err := containerd.New(address, containerd.WithDefaultNamespace(namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, namespace)

	creds := remote.DockerConfig(dockerCfg)
	hostOpts := config.HostOptions{
		Credentials: func(host string) (string, string, error) { return creds.Credentials(ctx, host) },
	}
	if hostsDir != "" {
		hostOpts.HostDir = config.HostDirFromRoot(hostsDir)
	}
	if plainHTTP {
		hostOpts.DefaultScheme = "http"
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, hostOpts)})

	pr := &pullProgress{out: newProgressRenderer(env.stderr, isTerminal(env.stderr)), began: time.Now()}
	stopProgress := pr.watch(ctx, client)
	img, err := client.Pull(ctx, image,
		containerd.WithResolver(resolver),
		containerd.WithPlatformMatcher(platforms.Only(p)),
		containerd.WithPullSnapshotter(snapshotter),
		containerd.WithPullUnpack,
		// As CRI does: the layer's image reference, manifest and digests reach the
		// snapshotter as containerd.io/snapshot/cri.* labels, which rill needs to stream.
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(image)),
		containerd.WithImageHandler(images.HandlerFunc(pr.handle)),
	)
	stopProgress()
	if err != nil {
		return fmt.Errorf("pull %s: %w", image, err)
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return fmt.Errorf("read the image's layers: %w", err)
	}
	sn := client.SnapshotService(snapshotter)
	streamed := 0
	for i, chain := range identity.ChainIDs(diffIDs) {
		how := "pulled in full"
		if info, err := sn.Stat(ctx, chain.String()); err == nil && info.Labels[labelRemote] != "" {
			how, streamed = "streamed", streamed+1
		}
		fmt.Fprintf(env.stdout, "layer %d/%d %s: %s\n", i+1, len(diffIDs), short(diffIDs[i].Encoded()), how)
	}
	fmt.Fprintf(env.stdout, "pulled %s (%s) into %s in %s: %d of %d layers streamed\n", img.Name(), img.Target().Digest,
		snapshotter, time.Since(pr.began).Round(time.Millisecond), streamed, len(diffIDs))
	return nil
}

// pullProgress shows what a pull fetches: the manifests it resolves, and a line per download
// in progress (bars on a terminal).
type pullProgress struct {
	out   *progressRenderer
	began time.Time
	mu    sync.Mutex
	seen  map[digest.Digest]bool
}

func (p *pullProgress) handle(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen == nil {
		p.seen = map[digest.Digest]bool{}
	}
	if !p.seen[desc.Digest] && !images.IsLayerType(desc.MediaType) {
		p.seen[desc.Digest] = true
		kind := desc.MediaType[strings.LastIndex(desc.MediaType, ".")+1:]
		p.out.Logf("resolved %s %s (%s)", kind, short(desc.Digest.Encoded()), mb(desc.Size))
	}
	return nil, nil
}

// watch shows the downloads in progress (containerd's content statuses) until stopped; a
// download whose status is gone is done. stop draws the last state.
func (p *pullProgress) watch(ctx context.Context, client *containerd.Client) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		active := map[string]progressLine{}
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			sts, err := client.ContentStore().ListStatuses(ctx)
			if err != nil {
				continue
			}
			now := map[string]bool{}
			for _, st := range sts {
				now[st.Ref] = true
				l := progressLine{Label: downloadLabel(st.Ref), Status: "downloading", Done: st.Offset, Total: st.Total, Counting: true}
				active[st.Ref] = l
				p.out.Set(st.Ref, l)
			}
			for ref, l := range active {
				if !now[ref] {
					l.Status, l.Done, l.Counting, l.Final = "downloaded", l.Total, false, true
					p.out.Set(ref, l)
					delete(active, ref)
				}
			}
		}
	}()
	return func() { cancel(); <-done; p.out.Close() }
}

// downloadLabel names a content ingest ("layer-sha256:0123…" as containerd's fetcher names
// them) by kind and short digest.
func downloadLabel(ref string) string {
	kind, rest, ok := strings.Cut(ref, "-")
	if !ok {
		return ref
	}
	if _, hex, ok := strings.Cut(rest, ":"); ok {
		return kind + " " + short(hex)
	}
	return ref
}
