package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/config"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/remote"
	"github.com/rillstream/rill/snapshotter/decision"
	"github.com/rillstream/rill/snapshotter/status"
)

// credentialSource is one place rill-snapshotter finds registry credentials, in the order it
// asks them. The CRI credential proxy and kubelet's credential-provider plugins (issue 17,
// item 1) add their sources to credentialSources.
type credentialSource struct {
	name string
	find func(ctx context.Context, host string) (found bool, err error)
}

func credentialSources(dockerConfig string) []credentialSource {
	creds := remote.DockerConfig(dockerConfig)
	return []credentialSource{{
		name: "docker config " + displayDockerConfig(dockerConfig),
		find: func(ctx context.Context, host string) (bool, error) {
			user, secret, err := creds.Credentials(ctx, host)
			return user != "" || secret != "", err
		},
	}}
}

func displayDockerConfig(p string) string {
	if p == "" {
		return "($DOCKER_CONFIG/config.json or ~/.docker/config.json)"
	}
	return p
}

// checkImage resolves IMAGE from this node, the way rill-snapshotter would, and says whether
// its layers would stream and why not, by rill-snapshotter's own decision.
func checkImage(ctx context.Context, env *cliEnv, o doctorOptions, cfg config.Config) []finding {
	var out []finding
	add := func(f finding) { out = append(out, f) }
	named, err := reference.ParseNormalizedNamed(o.image)
	if err != nil {
		return []finding{{"image", statusProblem, fmt.Sprintf("%q is not an image reference: %v", o.image, err), "name an image such as registry.example.com/team/app:v1"}}
	}
	host := reference.Domain(named)
	// The node's registry access: rill-snapshotter's hosts_dir and docker_config, unless the
	// flags name others.
	rf := o.registry
	if rf.hostsDir == remote.DefaultHostsDir && cfg.Streaming.HostsDir != "" {
		rf.hostsDir = filepath.Join(o.rootPrefix, cfg.Streaming.HostsDir)
	}
	if rf.dockerConfig == "" && cfg.Streaming.DockerConfig != "" {
		rf.dockerConfig = filepath.Join(o.rootPrefix, cfg.Streaming.DockerConfig)
	}

	found := ""
	for _, src := range credentialSources(rf.dockerConfig) {
		ok, err := src.find(ctx, host)
		if err != nil {
			add(finding{"credentials", statusWarn, fmt.Sprintf("%s: %v", src.name, err), "fix the file (or its credential helper)"})
			continue
		}
		if ok {
			found = src.name
			break
		}
	}
	if found != "" {
		add(finding{"credentials", statusOK, "for " + host + " in " + found, ""})
	} else {
		add(finding{"credentials", statusOK, "none for " + host + ": rill fetches anonymously (fine for public images)", ""})
	}

	ps, err := convert.ParsePlatforms(cfg.Streaming.Platforms)
	if err != nil {
		return append(out, finding{"image", statusProblem, "streaming.platforms: " + err.Error(), "fix streaming.platforms in rill's config"})
	}
	reg, _, cleanup, err := rf.clients(env, o.image, convert.WithPlatforms(ps...))
	if err != nil {
		return append(out, finding{"registry", statusProblem, err.Error(), "check streaming.hosts_dir"})
	}
	defer cleanup()
	top, err := reg.Resolve(ctx, o.image)
	if err != nil {
		fix := "check that the node reaches " + host + " (proxy, DNS, firewall), its hosts.toml under " + rf.hostsDir + " (plain HTTP, CA), and the credentials"
		if exitCode(err) == exitUnauthorized {
			fix = "give rill credentials for " + host + " (streaming.docker_config, or docker login as root)"
		}
		return append(out, finding{"registry", statusProblem, fmt.Sprintf("cannot resolve %s: %v", o.image, err), fix})
	}
	add(finding{"registry", statusOK, fmt.Sprintf("%s resolves to %s", o.image, top.Digest), ""})
	add(streamVerdict(ctx, reg, o.image, named, ps, cfg))
	return out
}

// streamVerdict is what rill-snapshotter would decide for the image, by its own rules
// (package snapshotter/decision) over what this node reads from the registry.
func streamVerdict(ctx context.Context, reg *remote.Registry, image string, named reference.Named, ps []ocispec.Platform, cfg config.Config) finding {
	const check = "would stream"
	if !cfg.Streaming.Enabled {
		return finding{check, statusProblem, "no: streaming.enabled = false", "set streaming.enabled = true"}
	}
	policy := decision.Policy{Platforms: platforms.Any(ps...), Trust: cfg.Streaming.Trust}
	f, err := decision.Gather(ctx, reg, image, "", policy)
	if err != nil {
		return finding{check, statusProblem, "cannot read the image and its artifacts: " + err.Error(), ""}
	}
	img := decision.DecideImage(f, "", policy)
	if img.Final {
		return finding{check, statusProblem, fmt.Sprintf("no: no platform of the image is in streaming.platforms %v (reason %s)", cfg.Streaming.Platforms, img.Reason), "add the platform to streaming.platforms in rill's config"}
	}
	platform := platforms.Format(f.Platform)
	switch img.Reason {
	case status.ReasonBound:
		return finding{check, statusOK, fmt.Sprintf("yes, %s: the tag binds streaming artifact %s (reason %s)", platform, short(img.Artifact.Digest.Encoded()), img.Reason), ""}
	case status.ReasonReferrer:
		return finding{check, statusOK, fmt.Sprintf("yes, %s: streaming artifact %s is a referrer and streaming.trust = referrers (reason %s)", platform, short(img.Artifact.Digest.Encoded()), img.Reason), ""}
	}
	for _, l := range f.Manifest.Layers {
		if _, reason, ok := decision.DecideLayer(f, img, l.Digest); ok && reason == status.ReasonEStargz {
			return finding{check, statusOK, fmt.Sprintf("yes, %s: its eStargz layers (TOC digests in the manifest) stream, the others are pulled in full (reason %s)", platform, reason), ""}
		}
	}
	var problems []string
	for _, err := range img.Rejected {
		problems = append(problems, err.Error())
	}
	_, byDigest := named.(reference.Digested)
	switch img.Reason {
	case status.ReasonBoundInvalid:
		return finding{check, statusProblem, fmt.Sprintf("no, %s: the bound streaming artifact is unusable (%s): pulled in full (reason %s)", platform, strings.Join(problems, "; "), img.Reason), "rebuild it: rill create --force " + image}
	case status.ReasonReferrersError:
		return finding{check, statusProblem, fmt.Sprintf("no, %s: %s (reason %s)", platform, strings.Join(problems, "; "), img.Reason), "check the registry's referrers API (or its sha256-<digest> fallback tags)"}
	case status.ReasonNoArtifact:
		if len(problems) > 0 {
			return finding{check, statusProblem, fmt.Sprintf("no, %s: every streaming artifact is unusable (%s): pulled in full (reason %s)", platform, strings.Join(problems, "; "), img.Reason), "rebuild it: rill create --force " + image}
		}
		return finding{check, statusProblem, fmt.Sprintf("no, %s: the image has no streaming artifact (reason %s): pulled in full", platform, img.Reason), "rill create " + image}
	}
	// Not bound, referrers not trusted: say whether there are referrers that would count.
	refs, _ := reg.Referrers(ctx, named.Name(), f.ManifestDigest, artifact.ArtifactType)
	switch {
	case len(refs) > 0 && byDigest:
		return finding{check, statusProblem, fmt.Sprintf("no, %s: pulled by digest, so only referrers count, and streaming.trust = %s (reason %s)", platform, cfg.Streaming.Trust, img.Reason), "pull by tag, or set streaming.trust = \"referrers\" in rill's config"}
	case len(refs) > 0:
		return finding{check, statusProblem, fmt.Sprintf("no, %s: its streaming artifacts are referrers only, not bound to the tag, and streaming.trust = %s (reason %s)", platform, cfg.Streaming.Trust, img.Reason), "bind one: rill create " + image + " (or set streaming.trust = \"referrers\")"}
	}
	return finding{check, statusProblem, fmt.Sprintf("no, %s: the image has no streaming artifact (reason %s): pulled in full", platform, img.Reason), "rill create " + image}
}
