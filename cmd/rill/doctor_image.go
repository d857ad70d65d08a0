package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/config"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/remote"
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
// its layers would stream and why not.
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

	platforms, err := convert.ParsePlatforms(cfg.Streaming.Platforms)
	if err != nil {
		return append(out, finding{"image", statusProblem, "streaming.platforms: " + err.Error(), "fix streaming.platforms in rill's config"})
	}
	reg, c, cleanup, err := rf.clients(env, o.image, convert.WithPlatforms(platforms...))
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
	add(streamVerdict(ctx, reg, c, o.image, named, cfg))
	return out
}

// streamVerdict applies the rules of rill-snapshotter's decision (docs/formats.md, trust)
// through what `rill show` finds in the registry.
func streamVerdict(ctx context.Context, reg *remote.Registry, c *convert.Converter, image string, named reference.Named, cfg config.Config) finding {
	const check = "would stream"
	if !cfg.Streaming.Enabled {
		return finding{check, statusProblem, "no: streaming.enabled = false", "set streaming.enabled = true"}
	}
	st, err := c.Show(ctx, image)
	if err != nil {
		return finding{check, statusProblem, "cannot read the image's artifacts: " + err.Error(), ""}
	}
	_, byDigest := named.(reference.Digested)
	var notStreamed []string
	for _, m := range st.Manifests {
		if !m.Streaming {
			notStreamed = append(notStreamed, m.Platform)
			continue
		}
		for _, a := range m.Artifacts {
			if a.Problem != "" {
				continue
			}
			if a.Bound && !byDigest {
				return finding{check, statusOK, fmt.Sprintf("yes, %s: the tag binds streaming artifact %s (reason bound-artifact)", m.Platform, short(a.Descriptor.Digest.Encoded())), ""}
			}
			if cfg.Streaming.Trust == "referrers" {
				return finding{check, statusOK, fmt.Sprintf("yes, %s: streaming artifact %s is a referrer and streaming.trust = referrers (reason referrer)", m.Platform, short(a.Descriptor.Digest.Encoded())), ""}
			}
		}
		if estargz(ctx, reg, named.Name(), m.Manifest) {
			return finding{check, statusOK, fmt.Sprintf("yes, %s: its eStargz layers (TOC digests in the manifest) stream, the others are pulled in full (reason estargz)", m.Platform), ""}
		}
		var problems []string
		for _, a := range m.Artifacts {
			if a.Problem != "" {
				problems = append(problems, short(a.Descriptor.Digest.Encoded())+": "+a.Problem)
			}
		}
		switch {
		case len(problems) > 0 && len(problems) == len(m.Artifacts):
			return finding{check, statusProblem, fmt.Sprintf("no, %s: every streaming artifact is unusable (%s): pulled in full", m.Platform, strings.Join(problems, "; ")), "rebuild it: rill create --force " + image}
		case len(m.Artifacts) > 0 && byDigest:
			return finding{check, statusProblem, fmt.Sprintf("no, %s: pulled by digest, so only referrers count, and streaming.trust = %s (reason no-bound-artifact)", m.Platform, cfg.Streaming.Trust), "pull by tag, or set streaming.trust = \"referrers\" in rill's config"}
		case len(m.Artifacts) > 0:
			return finding{check, statusProblem, fmt.Sprintf("no, %s: its streaming artifacts are referrers only, not bound to the tag, and streaming.trust = %s (reason no-bound-artifact)", m.Platform, cfg.Streaming.Trust), "bind one: rill create " + image + " (or set streaming.trust = \"referrers\")"}
		default:
			return finding{check, statusProblem, fmt.Sprintf("no, %s: the image has no streaming artifact (reason no-bound-artifact): pulled in full", m.Platform), "rill create " + image}
		}
	}
	return finding{check, statusProblem, fmt.Sprintf("no: no platform of the image (%s) is in streaming.platforms %v", strings.Join(notStreamed, ", "), cfg.Streaming.Platforms), "add the platform to streaming.platforms in rill's config"}
}

// estargz says whether a layer of manifest m names its TOC digest (such layers stream).
func estargz(ctx context.Context, reg *remote.Registry, repo string, m ocispec.Descriptor) bool {
	b, err := reg.FetchManifest(ctx, repo+"@"+m.Digest.String(), m)
	if err != nil {
		return false
	}
	var man ocispec.Manifest
	if json.Unmarshal(b, &man) != nil || len(man.Layers) == 0 {
		return false
	}
	for _, l := range man.Layers {
		if l.Annotations[artifact.AnnotationTOCDigest] != "" {
			return true
		}
	}
	return false
}
